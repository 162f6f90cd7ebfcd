"""init=PATH (fine-tuning from pretrained weights), train.freeze_d and the ada_kimg rule, in process (CPU).

Every accepted kind of file starts G bit-identical to its source; a resumed fine-tune equals an
uninterrupted one; frozen D blocks stay bit-identical; bad inputs are one line naming key and values.
"""

from __future__ import annotations

import importlib.util
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from stylenat import load_generator
from stylenat.cli import compose_config
from stylenat.files import atomic_save, sha256_file
from stylenat.reference import reference_checkpoint
from stylenat.training.checkpoint import ResumeError, find_latest_state, list_artifacts, load_state
from stylenat.training.config import parse_config
from stylenat.training.run import Trainer, prepare_run
from tests.reference_model import TINY as REFERENCE_TINY
from tests.reference_model import make_reference_g, small_reference_d
from tests.training.helpers import CONFIG_DIR, REPO, TINY, max_diff, steps_kimg
from tests.training.runs import CPU

# TINY without its model keys: with init the model comes from the file
RUN = [o for o in TINY if not o.startswith("model.")]
MODEL = [o for o in TINY if o.startswith("model.")]


def _compose(run_dir, steps, *extra):
    return compose_config(
        CONFIG_DIR, [*RUN, f"run_dir={run_dir}", f"train.total_kimg={steps_kimg(steps)}", *extra]
    )


def _train(run_dir, steps, *extra):
    trainer = Trainer(prepare_run(_compose(run_dir, steps, *extra), CPU))
    trainer.fit()
    return trainer


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """A 2-step tiny run from scratch: its final training state and snapshot are init sources."""
    run = tmp_path_factory.mktemp("source")
    cfg = compose_config(CONFIG_DIR, [*TINY, f"run_dir={run}", f"train.total_kimg={steps_kimg(2)}"])
    Trainer(prepare_run(cfg, CPU)).fit()
    return run


def _state(run):
    return find_latest_state(run)


def _snapshot(run):
    return list_artifacts(run, "network-snapshot-")[-1][1]


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """A 32 px official-layout checkpoint (the small reference G of tests/test_convert.py, with a D) and
    convert_checkpoint.py's --training-state output of it."""
    root = tmp_path_factory.mktemp("official")
    g_ema, g = make_reference_g(REFERENCE_TINY, seed=1), make_reference_g(REFERENCE_TINY, seed=2)
    path = root / "official.pt"
    atomic_save(reference_checkpoint(g_ema, "legacy", d_state_dict=small_reference_d(32), g_train=g), path)
    no_d = root / "official-g-only.pt"
    atomic_save(reference_checkpoint(g_ema, "legacy"), no_d)
    spec = importlib.util.spec_from_file_location(
        "convert_script", REPO / "scripts" / "convert_checkpoint.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main([str(path), str(root / "converted.pt"), "--training-state", "--w-avg-samples", "64"])
    return {"official": path, "official_g_only": no_d, "train_pt": root / "converted.train.pt"}


def _images(G, z):
    G = G.eval().requires_grad_(False)
    with torch.no_grad():
        return G(z)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["snapshot", "state", "official", "official_g_only", "train_pt"])
def test_g_starts_bit_identical_to_each_kind_of_source(kind, source_run, official, tmp_path, caplog):
    if kind in ("snapshot", "state"):
        src = _snapshot(source_run) if kind == "snapshot" else _state(source_run)
        extra = []
    else:
        src, extra = official[kind], ["dataset.resolution=32"]  # the reference G is a 32 px model
    with caplog.at_level(logging.INFO):
        trainer = Trainer(prepare_run(_compose(tmp_path / "run", 1, f"init={src}", *extra), CPU))
    gan = trainer.gan
    z = torch.randn(3, gan.G.z_dim, generator=torch.Generator().manual_seed(0))
    assert torch.equal(_images(gan.G_ema, z), _images(load_generator(src), z))
    assert trainer.counters.step == 0 and not gan.opt_G.state and not gan.opt_D.state
    source = trainer.config.init
    for name, weights in (("G", source.G), ("G_ema", source.G_ema), ("D", source.D)):
        if weights is not None:
            ours = getattr(gan, name).state_dict()
            assert set(ours) == set(weights) and all(torch.equal(ours[k], weights[k]) for k in ours), name
    if kind == "state":
        state = load_state(src)
        assert all(torch.equal(gan.D.state_dict()[k], v) for k, v in state["D"].items())
        assert not all(
            torch.equal(gan.G.state_dict()[k], state["G_ema"][k]) for k in state["G"]
        )  # G != G_ema
    if kind in ("official", "train_pt"):  # G from the file's g, G_ema from its g_ema
        assert not torch.equal(_images(gan.G, z), _images(gan.G_ema, z))
    fresh_d = kind in ("snapshot", "official_g_only")
    assert (source.D is None) == fresh_d
    assert ("D fresh (the file holds no discriminator)" in caplog.text) == fresh_d


@pytest.mark.slow
def test_resumed_fine_tune_equals_uninterrupted_and_the_state_wins(source_run, tmp_path, caplog):
    init = [f"init={_state(source_run)}", "train.freeze_d=1", "train.style_mixing=0.5", "train.r1_every=2"]
    full = _train(tmp_path / "full", 4, *init)
    _train(tmp_path / "split", 2, *init)
    with caplog.at_level(logging.INFO):
        resumed = _train(tmp_path / "split", 4, *init)  # the same command again
    assert "a training state wins over init=" in caplog.text
    assert resumed.counters.step == full.counters.step == 4
    for name in ("G", "D", "G_ema", "opt_G", "opt_D"):
        diff = max_diff(getattr(full.gan, name).state_dict(), getattr(resumed.gan, name).state_dict())
        assert diff == 0.0, name
    other = _compose(tmp_path / "split", 5, *[o for o in init if not o.startswith("train.freeze_d")])
    with pytest.raises(ResumeError, match=r"train.freeze_d differs \(checkpoint 1, config 0\)"):
        prepare_run(other, CPU)  # D's optimizer holds only the unfrozen parameters


@pytest.mark.slow
def test_init_path_and_sha256_are_recorded(source_run, tmp_path):
    from omegaconf import OmegaConf

    src = _snapshot(source_run)
    record = {"path": str(src.resolve()), "sha256": sha256_file(src), "kind": "snapshot"}
    _train(tmp_path / "run", 1, f"init={src}")
    assert OmegaConf.to_container(OmegaConf.load(tmp_path / "run" / "config.yaml"))["init"] == record
    assert load_state(find_latest_state(tmp_path / "run"))["config"]["init"] == record
    meta = torch.load(_snapshot(tmp_path / "run"), weights_only=True)["meta"]
    assert meta["init"] == record


@pytest.mark.slow
@pytest.mark.parametrize("discriminator", ["wavelet", "stylegan2"])
def test_freeze_d_leaves_exactly_its_blocks_unchanged(discriminator, tmp_path):
    trainer = Trainer(
        prepare_run(_compose(tmp_path / "run", 3, *MODEL, f"discriminator={discriminator}",
                             "discriminator.channel_max=32", "train.freeze_d=1", "train.r1_every=1"), CPU)
    )  # fmt: skip
    D = trainer.gan.D
    frozen = {id(p) for module in D.blocks()[0] for p in [*module.parameters(), *module.buffers()]}
    before = {name: t.clone() for name, t in D.state_dict(keep_vars=True).items()}
    is_frozen = {name: id(t) in frozen for name, t in D.state_dict(keep_vars=True).items()}
    assert any(is_frozen.values())
    trainer.fit()
    after = D.state_dict()
    params = {name for name, _ in D.named_parameters()}
    for name, was in before.items():
        if is_frozen[name]:  # parameters and the spectral norm's vectors alike
            assert torch.equal(after[name], was), name
        elif name in params:
            assert not torch.equal(after[name], was), name
    held = {id(p) for group in trainer.gan.opt_D.param_groups for p in group["params"]}
    assert held == {id(p) for p in D.parameters() if id(p) not in frozen}  # no optimizer state for the rest
    assert len(trainer.gan.opt_D.state) == len(held)


def _folder(path, count, size):
    path.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(np.full((size, size, 3), 40 * i % 256, np.uint8)).save(path / f"{i}.png")
    return path


@pytest.mark.slow
def test_ada_kimg_auto_is_100_with_init_else_500(source_run, tmp_path, caplog):
    data = _folder(tmp_path / "data", 3, 16)
    base = ["dataset=folder", f"dataset.path={data}", f"run_dir={tmp_path / 'run'}"]
    scratch = prepare_run(compose_config(CONFIG_DIR, [*base, "model=tiny", *MODEL]), CPU).config
    with caplog.at_level(logging.INFO):
        tuned = prepare_run(compose_config(CONFIG_DIR, [*base, f"init={_state(source_run)}"]), CPU).config
    assert "train.ada_kimg=auto -> 100 (init is set: fine-tuning)" in caplog.text
    assert (scratch.train.augment, scratch.train.ada_kimg) == ("ada", 500)  # 3 images: ADA on
    assert (tuned.train.augment, tuned.train.ada_kimg) == ("ada", 100)
    assert tuned.resolved["train"]["ada_kimg"] == 100 and scratch.resolved["train"]["ada_kimg"] == 500
    assert scratch.data.resolution == scratch.model.resolution == 16  # dataset.resolution: auto


def test_folder_resolution_auto_lets_the_model_follow_the_data(tmp_path):
    data = _folder(tmp_path / "faces32", 2, 32)
    config = parse_config(
        compose_config(CONFIG_DIR, ["dataset=folder", f"dataset.path={data}", "model=tiny", "run_dir=/tmp/x"])
    )
    assert config.data.resolution == config.model.resolution == 32


@pytest.mark.slow
def test_an_override_that_keeps_the_shapes_is_kept(source_run):
    cfg = _compose("/tmp/unused", 1, f"init={_state(source_run)}", "model.lr_mlp=0.02")
    config = parse_config(cfg, overrides=["model.lr_mlp=0.02"])
    assert config.model.lr_mlp == 0.02 and config.model.channels == [32, 32, 32]


@pytest.mark.slow
def test_one_line_errors(cli, source_run, tmp_path):  # noqa: F811
    state = _state(source_run)
    code, lines = cli(*RUN, f"init={state}", "model.channels=[32,32,16]")
    assert code == 2 and lines == [
        f"error: model.channels=[32, 32, 16] changes the shape of the weights of init={state} (the file has "
        "model.channels=[32, 32, 32]): drop the override to fine-tune them, or train without init"
    ]
    code, lines = cli(*RUN, f"init={state}", "dataset.resolution=32")
    assert code == 2 and lines == [
        f"error: dataset.resolution=32 (the demo faces) does not match the model of init={state} "
        "(model.resolution=16): train on 16x16 images (dataset.resolution=16 resizes them)"
    ]
    faces = _folder(tmp_path / "faces32", 2, 32)
    code, lines = cli("dataset=folder", f"dataset.path={faces}", f"init={state}")
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith(f"error: dataset.resolution=32 ({faces} holds 32x32 images) does not match")
    code, lines = cli("dataset=folder", f"dataset.path={faces}", "model=tiny", "dataset.resolution=256")
    assert code == 2 and lines == [
        f"error: dataset.resolution=256 ({faces} holds 32x32 images) does not fit the model: "
        "model.channels=[128, 128, 64, 64] has 4 stages, a 32x32 model (model.resolution follows "
        "dataset.resolution): pass dataset.resolution=auto or 32"
    ]
    missing = tmp_path / "nope.pt"
    code, lines = cli(*RUN, f"init={missing}")
    assert code == 2 and lines == [
        f"error: init={missing}: no such file (expected a snapshot, a training state or an official checkpoint)"
    ]
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    code, lines = cli(*RUN, f"init={foreign}")
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith(f"error: init={foreign}: {foreign.resolve()} is not a model file")
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    code, lines = cli(*RUN, f"init={text}")
    assert code == 2 and len(lines) == 1 and "is not a readable checkpoint" in lines[0], lines
    code, lines = cli(*RUN, *MODEL, "discriminator=stylegan2", "train.freeze_d=3")
    assert code == 2 and lines == [
        "error: train.freeze_d=3: the stylegan2 discriminator at 16 px has 2 blocks (one per resolution "
        "level, from the image side; the 4x4 head is never frozen)"
    ]


@pytest.mark.slow
def test_init_from_an_unconditional_model_on_labelled_data_is_one_line(source_run, tmp_path):
    """The model (c_dim included) comes from the init file: labelled data must match its classes."""
    import json

    data = _folder(tmp_path / "labelled", 4, 16)
    (data / "dataset.json").write_text(json.dumps({"labels": [[f"{i}.png", i % 2] for i in range(4)]}))
    base = [
        "dataset=folder",
        f"dataset.path={data}",
        f"run_dir={tmp_path / 'run'}",
        f"init={_state(source_run)}",
    ]
    with pytest.raises(ValueError) as err:
        prepare_run(compose_config(CONFIG_DIR, base), CPU)
    text = str(err.value)
    assert "\n" not in text and text.startswith(
        f"model.c_dim=0 (from init={_state(source_run)}): the data set"
    )
    assert "has 2 classes" in text and "dataset.use_labels=false" in text
    config = prepare_run(compose_config(CONFIG_DIR, [*base, "dataset.use_labels=false"]), CPU).config
    assert config.model.c_dim == 0
