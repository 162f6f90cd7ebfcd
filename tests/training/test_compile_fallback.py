"""train.compile=true on a CPU without a C++ compiler trains eagerly after one warning, instead of failing
inside the first compiled call (inductor builds its CPU graphs with g++ or $CXX)."""

import logging

import pytest
import torch
from torch._inductor import cpp_builder, exc

from stylenat.cli import compose_config
from stylenat.training import step
from stylenat.training.run import Trainer, prepare_run
from tests.training.helpers import CONFIG_DIR, TINY
from tests.training.runs import CPU


def _compiler(monkeypatch, name: str | None) -> None:
    """Make inductor's compiler search find ``name``, or nothing when None."""

    def get_cpp_compiler():
        if name is None:
            raise exc.InvalidCxxCompiler
        return name

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", get_cpp_compiler)


def _gan(tmp_path):
    cfg = compose_config(CONFIG_DIR, [*TINY, f"run_dir={tmp_path}", "train.compile=true"])
    return Trainer(prepare_run(cfg, CPU)).gan


def test_no_cpp_compiler_trains_eagerly_with_one_warning(tmp_path, monkeypatch, caplog):
    _compiler(monkeypatch, None)
    assert "no C++ compiler" in step.cpp_compiler_missing()
    with caplog.at_level(logging.WARNING, logger=step.__name__):
        gan = _gan(tmp_path)
    assert gan.G_fwd == gan.G.synthesis  # the eager bound method, not a compiled wrapper
    warnings = [r.getMessage() for r in caplog.records if r.name == step.__name__]
    assert len(warnings) == 1
    assert "train.compile=true: no C++ compiler found" in warnings[0] and "runs eagerly" in warnings[0]
    gan.run(1, [torch.rand(gan.batch_gpu, 3, 16, 16) * 2 - 1])  # and it trains
    assert all(torch.isfinite(p).all() for p in gan.G.parameters())


def test_with_a_cpp_compiler_g_is_compiled(tmp_path, monkeypatch, caplog):
    _compiler(monkeypatch, "g++")
    assert step.cpp_compiler_missing() is None
    with caplog.at_level(logging.WARNING, logger=step.__name__):
        gan = _gan(tmp_path)
    assert gan.G_fwd != gan.G.synthesis  # torch.compile's wrapper (it compiles on the first call)
    assert not [r for r in caplog.records if r.name == step.__name__]


def test_cuda_compiles_without_looking_for_a_cpp_compiler(monkeypatch):
    monkeypatch.setattr(step, "cpp_compiler_missing", lambda: pytest.fail("looked for a C++ compiler on CUDA"))
    compiled = step.compile_or_eager(torch.nn.functional.relu, torch.device("cuda"))
    assert compiled is not torch.nn.functional.relu
