"""scripts/benchmark.py smoke tests on the tiny model: the JSON lines of the ``scaling``, ``generator`` and
``inception`` modes."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("stylenat_benchmark_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _lines(capsys):
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]


def test_scaling_tiny_in_process(bench, capsys):
    argv = ["scaling", "--model", "tiny", "--resolutions", "16", "32", "--batch", "1", "--reps", "1"]
    bench.main([*argv, "--in-process", "--threads", "1"])
    *rows, summary = _lines(capsys)
    assert [r["resolution"] for r in rows] == [16, 32]
    for row in rows:
        assert "error" not in row, row
        assert row["mode"] == "scaling" and row["model"] == "tiny"
        assert "tiny.yaml with resolution=" in row["config"]
        for key in ("ms_per_img", "imgs_per_s", "gflop_per_img"):
            assert row[key] > 0, key
        assert row["peak_mem_mb"] >= 0 and 0 < row["na2d_share"] < 1
        assert row["imgs_per_s"] == pytest.approx(1e3 / row["ms_per_img"], rel=1e-2)
    assert rows[1]["gflop_per_img"] > 2 * rows[0]["gflop_per_img"]  # 4x the pixels
    assert summary["mode"] == "scaling" and len(summary["growth"]) == 1
    growth = summary["growth"][0]
    assert (growth["from"], growth["to"], growth["pixels"]) == (16, 32, 4.0)
    assert growth["gflop_per_img"] == pytest.approx(
        rows[1]["gflop_per_img"] / rows[0]["gflop_per_img"], rel=0.05
    )
    assert growth["ms_per_img"] > 0


def test_scaling_config_keeps_the_stage_recipe(bench):
    cfg, note = bench._config_at("stylenat_256", 1024)
    assert cfg["resolution"] == 1024 and len(cfg["kernels"]) == len(cfg["dilations"]) == 9
    assert cfg["dilations"][-1] == [1, 128] and cfg["kernels"][-1] == [7]
    cfg, _ = bench._config_at("stylenat_256", 32)
    assert len(cfg["kernels"]) == 4 and cfg["dilations"][:4] == [[1], [1], [1, 2], [1, 4]]
    cfg, note = bench._config_at("tiny", 64)
    assert cfg["channels"] == [128, 128, 64, 64, 64] and cfg["dilations"][-1] == [1, 8]
    assert "channels [128, 128, 64, 64, 64]" in note


def test_scaling_rejects_bad_resolutions(bench):
    with pytest.raises(SystemExit):
        bench.main(["scaling", "--resolutions", "48"])


def test_generator_compile_failure_is_reported_not_raised(bench, capsys, monkeypatch):
    def broken_compile(*args, **kwargs):
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(torch, "compile", broken_compile)
    bench.main(
        [
            "generator",
            "--model",
            "tiny",
            "--batch",
            "1",
            "--reps",
            "1",
            "--warmup",
            "0",
            "--compile",
            "--threads",
            "1",
        ]
    )
    (record,) = _lines(capsys)
    assert record["mode"] == "generator" and record["imgs_per_s"] > 0 and record["gflop_per_img"] > 0
    assert record["compile_error"] == "RuntimeError: no C++ compiler here"


def test_gemm_split_times_matrix_products_only(bench):
    import time

    a, b = torch.randn(256, 256), torch.randn(4, 256, 256)

    def elementwise_and_sleep():
        (a * 2 + 1).exp_()
        time.sleep(0.02)

    def products_and_sleep():
        time.sleep(0.02)
        start = time.perf_counter()
        for _ in range(20):
            a @ a  # mm
            torch.bmm(b, b)
            torch.addmm(a, a, a)
        return time.perf_counter() - start

    assert bench.gemm_split(elementwise_and_sleep, reps=1) == (0.0, 0.0)
    measured = []
    got, share = bench.gemm_split(lambda: measured.append(products_and_sleep()), reps=1)
    products_ms = measured[0] * 1e3
    assert 0 < got <= products_ms  # the products, not the sleep around them
    assert 0 < share <= got / (products_ms + 20)  # the call, sleep included, is the denominator


def test_top_ops_splits_the_products_from_the_rest():
    """The products' FLOPs are counted exactly (forward and backward), the other ops' time kept apart."""
    from stylenat import perf

    a = torch.randn(512, 256, requires_grad=True)
    b = torch.randn(256, 384, requires_grad=True)
    q = torch.randn(16, 128, 64, requires_grad=True)

    def fn():
        y = (a @ b).exp().sum() + torch.bmm(q, q.transpose(1, 2)).tanh().sum()
        y.backward()

    record = perf.top_ops(fn, reps=2)
    products = record["products"]
    mm_flop = 3 * 2 * 512 * 256 * 384  # forward, and a gradient for each operand
    bmm_flop = 3 * 2 * 16 * 128 * 128 * 64
    assert products["gflop"] == pytest.approx((mm_flop + bmm_flop) / 1e9, rel=0.005)  # 0.403
    total = record["self_ms_per_call"]
    assert products["self_ms"] + record["other_self_ms"] == pytest.approx(total, abs=0.2)
    assert record["other_self_ms"] > 0  # exp, tanh, sums and their gradients
    assert 0 < products["share"] < 1 and products["gflop_per_s"] > 0
    assert record["sgemm_gflop_per_s"] > 0


def test_na_records_carry_the_gemm_share():
    import platform
    import subprocess
    import sys

    argv = ["na", "--res", "16", "--batch", "1", "--heads", "2", "--dim", "8", "--reps", "1", "--no-oracle"]
    proc = subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [r["pass"] for r in rows] == ["fwd", "fwd+bwd"]
    for row in rows:
        assert "error" not in row and row["gemm_ms"] > 0 and row["gemm_share"] > 0, row
        assert row["malloc_tuned"] is (platform.libc_ver()[0] == "glibc")


def test_inception_mode_reports_every_figure(bench, capsys):
    argv = ["inception", "--n", "2", "--res", "16", "--batch", "2", "--net-batch", "1", "--reps", "1"]
    bench.main([*argv, "--random-weights", "--threads", "1", "--in-process"])
    rows = _lines(capsys)
    assert [(r["figure"], r["variant"]) for r in rows] == [
        ("network", "fp32"),
        ("network", "channels_last"),
        ("network", "fused"),
        ("pipeline_files", "png"),
        ("pipeline_tensors", "uint8"),
        ("pipeline_tensors", "float"),
    ]
    for row in rows:
        assert "error" not in row, row
        assert row["mode"] == "inception" and row["protocol"] == "stylegan" and row["imgs_per_s"] > 0
        if row["figure"] == "network":
            assert row["batch"] == 1
        else:
            assert (row["n"], row["resolution"], row["batch"]) == (2, 16, 2)
            assert row["ratio_to_network"] > 0 and row["ratio_to_network_fp32"] > 0


def test_gemm_split_passes_flex_attention_through(bench):
    """STYLENAT_NA_BACKEND=flex on the CPU: the GEMM timer (a TorchDispatchMode) used to refuse flex_attention's
    higher-order op (and torch.compile under it); now the attention runs, is timed as a fused product, and
    gives the same attention as the torch backend."""
    from stylenat.ops.na import flex_backend
    from stylenat.ops.na.dispatch import na2d

    if not flex_backend.available("cpu"):
        pytest.skip("no flex attention in this torch")
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 12, 12, 16, generator=gen) for _ in range(3))
    rpb = torch.randn(2, 5, 5, generator=gen)
    out = []
    with torch.no_grad():
        ms, share = bench.gemm_split(lambda: out.append(na2d(q, k, v, 3, 2, rpb=rpb, backend="flex")), reps=1)
        expected = na2d(q, k, v, 3, 2, rpb=rpb, backend="torch")
    assert ms > 0 and 0 < share <= 1
    torch.testing.assert_close(out[0], expected, rtol=1e-4, atol=1e-5)


def test_generator_mode_with_the_flex_backend(bench, capsys, monkeypatch):
    """The reported crash: ``STYLENAT_NA_BACKEND=flex scripts/benchmark.py generator`` on the CPU."""
    from stylenat.ops.na import flex_backend

    if not flex_backend.available("cpu"):
        pytest.skip("no flex attention in this torch")
    monkeypatch.setenv("STYLENAT_NA_BACKEND", "flex")
    bench.main(
        ["generator", "--model", "tiny", "--batch", "1", "--reps", "1", "--warmup", "1", "--threads", "1"]
    )
    (record,) = _lines(capsys)
    assert record["mode"] == "generator" and "error" not in record
    assert record["gemm_s_per_batch"] > 0 and 0 < record["gemm_share"] <= 1


def _step_args(**overrides):
    """train-step's arguments at their smallest (configs/benchmark.yaml's keys)."""
    from types import SimpleNamespace

    defaults = dict(device="cpu", threads=None, batch=2, reps=1, warmup=0, amp="false", profile=0)
    return SimpleNamespace(**{**defaults, "blocks": False, "reuse_fakes": None, **overrides})


def test_train_step_times_each_part_and_profiles_whole_steps(bench):
    record = bench._train_step_measure(_step_args(profile=2), "tiny")
    assert "blocks" not in record
    assert record["model"] == "tiny" and record["batch"] == 2 and record["resolution"] == 32
    assert all(record[f"{part}_step_s"] > 0 for part in ("d", "r1", "g"))
    assert record["sec_per_kimg"] == pytest.approx(record["step_s_amortized"] / 2 * 1000, rel=0.01)
    profile = record["profile"]
    assert record["profile_steps"] == 2 and profile["self_ms_per_call"] > 0
    ops = profile["ops"]
    assert 0 < len(ops) <= 12 and sum(op["share"] for op in ops) <= 1.0
    assert [op["self_ms"] for op in ops] == sorted((op["self_ms"] for op in ops), reverse=True)
    names = {op["op"] for op in ops}
    assert names & {"aten::mm", "aten::addmm", "aten::bmm"}  # the products are among the top ops
    assert 0 < profile["products"]["self_ms"] < profile["self_ms_per_call"]
    json.dumps(record)  # one JSON line


def test_train_step_blocks_time_every_stage_by_part(bench):
    blocks = bench._train_step_measure(_step_args(blocks=True), "tiny")["blocks"]
    assert [b["stage"] for b in blocks] == [4, 8, 16, 32]  # the tiny model's stages
    assert [b["channels"] for b in blocks] == [128, 128, 64, 64] and all(b["heads"] == 4 for b in blocks)
    assert [b["attention_with_projections"] for b in blocks] == [True, False, False, False]  # 4x4: MHSA
    for b in blocks:
        assert all(b[f"{part}_ms"] > 0 for part in ("adain", "qkv", "attention", "mlp", "block"))
    big, small = blocks[-1], blocks[1]  # the same block at 16x the tokens (half the channels) costs more
    assert big["attention_ms"] > small["attention_ms"] and big["block_ms"] > small["block_ms"]


@pytest.mark.parametrize("reuse", ["true", "false"])
def test_train_step_follows_reuse_fakes(bench, monkeypatch, reuse):
    """--reuse-fakes overrides the recipe; with it the D part trains on fakes drawn once, outside it."""
    from stylenat.training.step import GanStep

    draws = []
    g_fakes = GanStep.g_fakes
    monkeypatch.setattr(GanStep, "g_fakes", lambda self: draws.append(1) or g_fakes(self))
    record = bench._train_step_measure(_step_args(reps=2, reuse_fakes=reuse), "tiny")
    assert record["reuse_fakes"] is (reuse == "true")
    assert all(record[f"{part}_step_s"] > 0 for part in ("d", "r1", "g"))
    assert len(draws) == (1 if reuse == "true" else 0)  # not once per timed D step
