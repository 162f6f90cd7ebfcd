"""Sampling a class-conditional snapshot: class_onehot / class_idx / class_name and their one-line errors,
generate.py, the snapshot's class_names, and the metrics' label draws (the data set's distribution)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import stylenat
from stylenat.models.build import build_generator
from stylenat.sampling import (
    class_onehot,
    generate_images,
    resolve_class,
    seed_labels,
    seeded_images_fn,
    to_uint8,
)
from stylenat.snapshot import CheckpointError, generator_from_snapshot, native_snapshot, save_snapshot
from tests.tiny import TINY_G16

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["cats", "dogs", "owls"]


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory):
    folder = tmp_path_factory.mktemp("snaps")
    torch.manual_seed(0)
    G = build_generator({**TINY_G16, "c_dim": 3})
    save_snapshot(folder / "cond.pt", G, {"kimg": 0, "class_names": NAMES})
    torch.manual_seed(0)
    save_snapshot(folder / "uncond.pt", build_generator(TINY_G16), {"kimg": 0})
    return folder / "cond.pt", folder / "uncond.pt"


def run(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_snapshot_round_trip_keeps_c_dim_and_class_names(snapshots, tmp_path):
    cond, uncond = snapshots
    G = stylenat.load_generator(cond)
    assert (G.c_dim, G.class_names) == (3, NAMES)
    data = torch.load(cond, weights_only=True)
    assert data["model_config"]["c_dim"] == 3 and data["meta"]["class_names"] == NAMES
    U = stylenat.load_generator(uncond)
    assert (U.c_dim, U.class_names) == (0, None)
    assert "c_dim" not in torch.load(uncond, weights_only=True)["model_config"]  # as before conditioning
    # a training state carries them too
    state = {"G_ema": data["state_dict"], "model_config": data["model_config"], "class_names": NAMES}
    assert generator_from_snapshot(native_snapshot(state)).class_names == NAMES
    with pytest.raises(CheckpointError, match=r"meta class_names=\['a'\]: expected 3 names \(c_dim=3\)"):
        generator_from_snapshot({**data, "meta": {"class_names": ["a"]}}, "x.pt")


def test_class_onehot_and_its_errors(snapshots):
    G = stylenat.load_generator(snapshots[0])
    U = stylenat.load_generator(snapshots[1])
    assert torch.equal(class_onehot(G, 2, 2, "cpu"), torch.tensor([[0.0, 0, 1], [0, 0, 1]]))
    assert class_onehot(U, None, 4, "cpu") is None
    with pytest.raises(
        ValueError, match=r"class_idx=3: expected an integer in 0..2 \(classes: 0=cats, 1=dogs, 2=owls\)"
    ):
        class_onehot(G, 3, 1)
    with pytest.raises(ValueError, match=r"this generator is class-conditional: pass class_idx=0..2"):
        class_onehot(G, None, 1)
    with pytest.raises(ValueError, match="class_idx=0: this generator is unconditional"):
        class_onehot(U, 0, 1)
    assert resolve_class(G, class_name="owls") == 2
    with pytest.raises(
        ValueError, match="class_name='emus': unknown class; the classes are cats, dogs, owls"
    ):
        resolve_class(G, class_name="emus")
    with pytest.raises(ValueError, match="class_name='cats': this generator is unconditional"):
        resolve_class(U, class_name="cats")


def test_generate_images_draws_the_class_asked_for(snapshots):
    G = stylenat.load_generator(snapshots[0])
    z = torch.from_numpy(np.random.RandomState(4).randn(1, G.z_dim)).float()
    for k in range(3):
        expected = G(z, class_onehot(G, k, 1))
        torch.testing.assert_close(generate_images(G, [4], class_idx=k), expected)
    assert not torch.allclose(generate_images(G, [4], class_idx=0), generate_images(G, [4], class_idx=1))


def test_generate_cli_class_idx_and_class_name(snapshots, tmp_path):
    cond, _ = snapshots
    out = tmp_path / "out"
    result = run(
        "generate.py", f"checkpoint={cond}", "seeds=3-5", "class_idx=1", f"outdir={out}", "grid=false"
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["seed0003.png", "seed0004.png", "seed0005.png"]
    G = stylenat.load_generator(cond)
    expected = to_uint8(generate_images(G, [4], class_idx=1))[0]
    assert np.abs(np.asarray(Image.open(out / "seed0004.png")).astype(int) - expected.astype(int)).max() <= 1
    by_name = tmp_path / "named"
    result = run(
        "generate.py", f"checkpoint={cond}", "seeds=4", "class_name=dogs", f"outdir={by_name}", "grid=false"
    )
    assert result.returncode == 0, result.stderr
    assert np.array_equal(
        np.asarray(Image.open(by_name / "seed0004.png")), np.asarray(Image.open(out / "seed0004.png"))
    )


@pytest.mark.parametrize(
    "which, extra, message",
    [
        (
            0,
            [],
            "error: this generator is class-conditional: pass class_idx=0..2 (classes: 0=cats, 1=dogs, 2=owls)",
        ),
        (0, ["class_name=emus"], "error: class_name='emus': unknown class; the classes are cats, dogs, owls"),
        (
            0,
            ["class_idx=7"],
            "error: class_idx=7: expected an integer in 0..2 (classes: 0=cats, 1=dogs, 2=owls)",
        ),
        (1, ["class_idx=0"], "error: class_idx=0: this generator is unconditional (no classes)"),
    ],
    ids=["no-class", "unknown-name", "out-of-range", "unconditional"],
)
def test_generate_cli_class_errors_are_one_line(snapshots, tmp_path, capsys, which, extra, message):
    spec = importlib.util.spec_from_file_location("generate_entry", ROOT / "generate.py")
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    with pytest.raises(SystemExit) as exit_:
        entry.main([f"checkpoint={snapshots[which]}", "seeds=0", f"outdir={tmp_path / 'err'}", *extra])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == message
    assert not (tmp_path / "err").exists()


def test_metric_labels_follow_the_data_distribution_deterministically():
    pool = np.array([0] * 70 + [1] * 20 + [2] * 10)
    seeds = list(range(3000))
    c = seed_labels(seeds, pool, 3)
    assert c.shape == (3000, 3) and torch.equal(c.sum(1), torch.ones(3000))
    share = c.mean(0)
    # binomial standard deviations at n = 3000 are <= 0.009: 4 sigma
    torch.testing.assert_close(share, torch.tensor([0.7, 0.2, 0.1]), atol=0.036, rtol=0)
    # deterministic per seed, whatever the batch it is drawn in
    assert torch.equal(seed_labels([17, 5], pool, 3), c[[17, 5]])
    assert torch.equal(seed_labels(seeds[:100], np.zeros(5, dtype=int), 3)[:, 0], torch.ones(100))


def test_the_metrics_generator_function_of_a_conditional_g(snapshots):
    G = stylenat.load_generator(snapshots[0])
    pool = np.array([0, 0, 2])
    generate = seeded_images_fn(G, "cpu", label_pool=pool)
    seeds = torch.arange(6)
    images = generate(seeds)
    z = torch.from_numpy(np.stack([np.random.RandomState(s).randn(G.z_dim) for s in range(6)])).float()
    torch.testing.assert_close(images, G(z, seed_labels(range(6), pool, 3)))
    fixed = seeded_images_fn(G, "cpu", class_idx=1)(seeds)
    torch.testing.assert_close(fixed, G(z, class_onehot(G, 1, 6)))
    with pytest.raises(ValueError, match=r"class-conditional generator \(c_dim=3\) needs labels for metrics"):
        seeded_images_fn(G, "cpu")
