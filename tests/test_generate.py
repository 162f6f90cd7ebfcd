import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import stylenat
from stylenat.models.build import build_generator
from stylenat.sampling import generate_images, make_grid, parse_seeds, seed_latents, to_uint8
from stylenat.snapshot import save_snapshot
from tests.tiny import TINY_G16

ROOT = Path(__file__).resolve().parents[1]
TINY = TINY_G16


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    torch.manual_seed(0)
    G = build_generator(TINY)
    path = tmp_path_factory.mktemp("snap") / "network-snapshot-000000.pt"
    save_snapshot(path, G, {"kimg": 0})
    return path


def run(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_parse_seeds():
    assert parse_seeds("0-3,7") == [0, 1, 2, 3, 7]
    assert parse_seeds([1, "4-5"]) == [1, 4, 5]
    assert parse_seeds(9) == [9]
    with pytest.raises(ValueError, match="bad seeds 'a-b'"):
        parse_seeds("a-b")
    with pytest.raises(ValueError, match="bad seed range '5-2'"):
        parse_seeds("5-2")


def test_seed_latents_are_batch_independent(snapshot):
    G = stylenat.load_generator(snapshot)
    assert torch.equal(seed_latents([3], 16)[0], seed_latents([1, 2, 3], 16)[2])
    a = generate_images(G, [0, 1, 2, 3, 4], batch_size=2)
    b = generate_images(G, [4, 0], batch_size=5)
    torch.testing.assert_close(a[[4, 0]], b, rtol=1e-5, atol=1e-5)


def test_grid_layout():
    imgs = np.arange(5 * 2 * 2 * 3, dtype=np.uint8).reshape(5, 2, 2, 3)
    grid = make_grid(imgs, cols=3)
    assert grid.shape == (4, 6, 3)
    assert np.array_equal(grid[2:4, 2:4], imgs[4])
    assert not grid[2:4, 4:6].any()


def test_snapshot_loads_with_weights_only(snapshot):
    data = torch.load(snapshot, weights_only=True)
    assert data["format"] == "stylenat.snapshot" and data["model_config"]["resolution"] == 16
    G = stylenat.load_generator(snapshot)
    img = G(torch.randn(2, G.z_dim))
    assert img.shape == (2, 3, 16, 16) and img.dtype == torch.float32


def test_generate_cli_writes_images(snapshot, tmp_path):
    out = tmp_path / "out"
    result = run(
        "generate.py",
        f"checkpoint={snapshot}",
        "seeds=0-3",
        f"outdir={out}",
        "truncation_psi=0.7",
        "mixing.enabled=true",
        "mixing.row_seeds=[1,2]",
        "mixing.col_seeds=[3,4,5]",
        "mixing.crossover=2",
        "interpolation.enabled=true",
        "interpolation.steps=3",
    )
    assert result.returncode == 0, result.stderr
    for seed in range(4):
        assert Image.open(out / f"seed{seed:04d}.png").size == (16, 16)
    assert Image.open(out / "grid.png").size == (32, 32)
    assert Image.open(out / "mixing.png").size == (4 * 16, 3 * 16)
    assert Image.open(out / "interpolation.png").size == (3 * 16, 3 * 16)
    assert (out / "interpolation.gif").exists()
    G = stylenat.load_generator(snapshot)
    expected = to_uint8(generate_images(G, [2], truncation_psi=0.7))[0]
    got = np.asarray(Image.open(out / "seed0002.png"))
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


def test_generate_cli_errors_are_one_line(tmp_path):
    result = run("generate.py", f"checkpoint={tmp_path / 'missing.pt'}", f"outdir={tmp_path}")
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: checkpoint {tmp_path / 'missing.pt'} does not exist"
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"not a checkpoint")
    result = run("generate.py", f"checkpoint={bogus}", f"outdir={tmp_path}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: {bogus} is not a readable checkpoint")
