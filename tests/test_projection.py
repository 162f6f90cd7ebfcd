"""scripts/project.py and stylenat.projection: GAN inversion on a tiny generator.

The reference init (0.02-std linears, 0.02-gain convolutions) makes an untrained generator's images
almost the same for every w, so any w would "recover" them; the tests re-initialise the tiny generator with
PyTorch's default init, which makes the image depend on w (PSNR from w_avg ~14 dB, not ~30).
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stylenat.data import demo_dataset_path
from stylenat.data.transforms import minus_one_one_to_uint8
from stylenat.metrics import build_inception
from stylenat.models.build import build_generator
from stylenat.projection import (
    INCEPTION_DISTANCE,
    VGG_DISTANCE,
    InceptionDistance,
    ProjectionOptions,
    VGGDistance,
    build_distance,
    load_target,
    project,
    psnr_db,
    w_statistics,
    write_outputs,
)
from stylenat.sampling import load_projected_w
from stylenat.snapshot import save_snapshot
from tests.tiny import TINY_G16

ROOT = Path(__file__).resolve().parents[1]
TINY = TINY_G16


def contrasted_generator():
    """The tiny generator with PyTorch's default init (see the module docstring)."""
    torch.manual_seed(0)
    G = build_generator(TINY).eval().requires_grad_(False)
    with torch.no_grad():
        for module in G.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                module.reset_parameters()
    return G


@pytest.fixture(scope="module")
def G():
    return contrasted_generator()


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory, G):
    path = tmp_path_factory.mktemp("snap") / "network-snapshot-000000.pt"
    save_snapshot(path, G, {"kimg": 0})
    return path


@pytest.fixture(scope="module")
def face():
    return demo_dataset_path() / "img00000.png"


def project_script():
    spec = importlib.util.spec_from_file_location("project_script", ROOT / "scripts" / "project.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_projection_recovers_an_image_of_a_known_w(G):
    with torch.no_grad():
        w = G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(1)))
        image = G.to_minus_one_one(G.synthesis(w))
    target = minus_one_one_to_uint8(image)[0]
    options = ProjectionOptions(steps=300, perceptual_weight=0, pixel_weight=10, w_avg_samples=1000)
    w_avg, _ = w_statistics(G, 1000)
    with torch.no_grad():
        start = psnr_db(G.to_minus_one_one(G.synthesis(w_avg[None])), image)
    result = project(G, target, options)
    print(f"PSNR from w_avg {start:.1f} dB, after projection {result.distances['psnr_db']:.1f} dB")
    assert start < 20
    assert result.distances["psnr_db"] >= 30
    assert result.w.shape == (1, G.n_latent, G.w_dim)
    assert torch.equal(result.w, result.w[:, :1].expand_as(result.w))  # W: one w for every layer
    with torch.no_grad():
        torch.testing.assert_close(G.to_minus_one_one(G.synthesis(result.w)), result.image)
    assert all(p.grad is None for p in G.parameters())


def test_w_plus_optimises_one_w_per_layer(G, face):
    options = ProjectionOptions(steps=5, w_plus=True, perceptual_weight=0, pixel_weight=1, w_avg_samples=100)
    result = project(G, load_target(face, G.resolution), options)
    assert result.w.shape == (1, G.n_latent, G.w_dim)
    assert not torch.equal(result.w[:, 0], result.w[:, 1])


def test_w_statistics_come_from_the_mapping_network_not_the_running_mean():
    """As the reference projector: w_avg and w_std from z mapped by G's mapping network (seed 123)."""
    G = contrasted_generator()
    G.w_avg.fill_(0.5)  # a running mean training kept: ignored
    w_avg, std = w_statistics(G, 500)
    w = G.mapping(torch.from_numpy(np.random.RandomState(123).randn(500, G.z_dim)).float())[:, 0].double()
    torch.testing.assert_close(w_avg.double(), w.mean(0), rtol=1e-5, atol=1e-6)
    assert std == pytest.approx(float((w - w.mean(0)).square().sum(1).mean().sqrt()), rel=1e-5)


def test_an_objective_of_nothing_is_a_one_line_error():
    with pytest.raises(ValueError, match="are all 0: nothing to fit") as err:
        ProjectionOptions(perceptual_weight=0)
    assert "\n" not in str(err.value)


def test_the_default_objective_is_the_references_lpips_alone():
    import yaml

    options = ProjectionOptions()
    assert (options.perceptual_weight, options.pixel_weight, options.w_reg_weight) == (1.0, 0.0, 0.0)
    assert options.w_avg_samples == 10000
    cfg = yaml.safe_load((ROOT / "configs" / "project.yaml").read_text())
    assert (cfg["perceptual_weight"], cfg["pixel_weight"], cfg["w_reg_weight"]) == (1.0, 0.0, 0.0)
    assert cfg["w_avg_samples"] == 10000


def test_without_vgg16_the_inception_distance_warns_and_is_named(
    snapshot, face, tmp_path, monkeypatch, caplog
):
    import yaml

    import stylenat.metrics
    from stylenat.projection import run_projection

    monkeypatch.delenv("STYLENAT_VGG16", raising=False)
    monkeypatch.setenv("STYLENAT_CACHE", str(tmp_path / "cache"))  # no vgg16.pt there
    monkeypatch.setattr(stylenat.metrics, "load_inception", lambda *a, **k: build_inception(0))  # offline
    cfg = {
        **yaml.safe_load((ROOT / "configs" / "project.yaml").read_text()),
        "checkpoint": str(snapshot),
        "target": str(face),
        "outdir": str(tmp_path / "out"),
        "steps": 2,
        "w_avg_samples": 50,
        "device": "cpu",
    }
    with caplog.at_level("WARNING", logger="stylenat.projection"):
        record = run_projection(cfg)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "\n" not in warnings[0] and INCEPTION_DISTANCE in warnings[0]
    saved = json.loads((tmp_path / "out" / "projection.json").read_text())
    assert saved["perceptual_distance"] == record["perceptual_distance"] == INCEPTION_DISTANCE
    assert saved["options"]["pixel_weight"] == 0.0 and saved["options"]["w_reg_weight"] == 0.0


def test_demo_face_loss_falls_and_outputs_are_written(G, face, tmp_path):
    target = load_target(face, G.resolution)  # the 32x32 face resized to 16
    assert target.shape == (3, 16, 16) and target.dtype == torch.uint8
    distance = InceptionDistance(build_inception(0))  # the real network, random weights (offline)
    options = ProjectionOptions(steps=30, w_avg_samples=1000, frame_every=5)
    result = project(G, target, options, distance)
    losses = np.array(result.losses)
    smoothed = np.convolve(losses, np.ones(10) / 10, mode="valid")
    print("loss moving average:", np.round(smoothed, 4).tolist())
    assert np.all(np.diff(smoothed) <= 0)
    assert losses[-8:].mean() < losses[:8].mean()
    record = {"perceptual_distance": distance.name, "distances": result.distances, "losses": result.losses}
    write_outputs(tmp_path, result, target, record, gif=True)
    with np.load(tmp_path / "projected_w.npz") as data:
        assert data.files == ["w"] and data["w"].shape == (1, G.n_latent, G.w_dim)
    pair = np.asarray(Image.open(tmp_path / "proj.png"))
    assert pair.shape == (16, 32, 3)
    assert np.array_equal(pair[:, :16], target.permute(1, 2, 0).numpy())
    gif = Image.open(tmp_path / "proj.gif")
    assert gif.n_frames == 7 and gif.size == (32, 16)  # steps 0, 5, ..., 25 and the final w
    saved = json.loads((tmp_path / "projection.json").read_text())
    assert saved["perceptual_distance"] == INCEPTION_DISTANCE
    assert set(saved["distances"]) == {"perceptual", "pixel_mse", "w_reg", "psnr_db"}
    assert len(saved["losses"]) == 30


def test_cli_projects_and_generate_renders_projected_w(snapshot, face, tmp_path):
    out = tmp_path / "proj"
    result = run(
        "scripts/project.py",
        f"checkpoint={snapshot}",
        f"target={face}",
        f"outdir={out}",
        "steps=20",
        "perceptual_weight=0",
        "pixel_weight=1",
        "w_avg_samples=500",
        "gif=true",
        "gif_every=4",
        "device=cpu",
    )
    assert result.returncode == 0, result.stderr
    final = json.loads(result.stdout.splitlines()[0])
    assert final["perceptual_distance"] is None and final["psnr_db"] > 0
    saved = json.loads((out / "projection.json").read_text())
    assert saved["space"] == "w" and saved["options"]["steps"] == 20 and len(saved["losses"]) == 20
    assert saved["distances"]["psnr_db"] == final["psnr_db"]
    for name in ("projected_w.npz", "proj.png", "proj.gif", "projection.json"):
        assert (out / name).is_file(), name
    rendered = tmp_path / "gen"
    result = run(
        "generate.py",
        f"checkpoint={snapshot}",
        f"projected_w={out / 'projected_w.npz'}",
        f"outdir={rendered}",
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in rendered.iterdir()) == ["projected.png"]
    image = np.asarray(Image.open(rendered / "projected.png")).astype(int)
    projection = np.asarray(Image.open(out / "proj.png"))[:, 16:].astype(int)
    assert np.abs(image - projection).max() <= 1


def test_projected_w_of_another_generator_is_one_line(G, tmp_path):
    path = tmp_path / "w.npz"
    np.savez(path, w=np.zeros((1, G.n_latent + 1, G.w_dim), np.float32))
    with pytest.raises(ValueError, match=r"has shape \[1, 7, 16\]; this generator takes \[N, 6, 16\]"):
        load_projected_w(path, G)
    np.savez(path, z=np.zeros(3))
    with pytest.raises(ValueError, match="has no array 'w'"):
        load_projected_w(path, G)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_projected_w(tmp_path / "missing.npz", G)
    bare = tmp_path / "w.npy"
    np.save(bare, np.zeros((1, G.n_latent, G.w_dim), np.float32))
    with pytest.raises(ValueError, match="is a bare array: expected an .npz holding 'w'"):
        load_projected_w(bare, G)
    text = tmp_path / "w.txt"
    text.write_text("not an array")
    with pytest.raises(ValueError, match=f"projected_w {text} is not a readable .npz"):
        load_projected_w(text, G)


class PixelEmbedding:
    """Stands in for NVIDIA's VGG16 (not shipped): records what the LPIPS embedding is given."""

    sha256 = "0" * 64

    def __init__(self):
        self.seen = []

    def lpips_features(self, pixels):
        self.seen.append(pixels.detach())
        return pixels.flatten(1) / 255


def test_vgg_distance_feeds_lpips_pixels_at_most_256_wide():
    vgg = PixelEmbedding()
    distance = VGGDistance(vgg)
    target = torch.full((1, 3, 512, 512), -1.0)
    image = torch.ones(1, 3, 512, 512, requires_grad=True)
    value = distance(image, distance.reference(target))
    assert distance.name == VGG_DISTANCE
    assert [tuple(p.shape) for p in vgg.seen] == [(1, 3, 256, 256)] * 2
    assert vgg.seen[0].max() == 0 and vgg.seen[1].min() == 255  # [-1, 1] -> 0..255
    assert value.item() == pytest.approx(3 * 256 * 256)
    (grad,) = torch.autograd.grad(value, [image])
    assert grad.abs().sum() > 0


def test_missing_vgg_weights_are_a_user_error(tmp_path):
    with pytest.raises(ValueError, match="VGG16 weights file not found"):
        build_distance(vgg16=tmp_path / "vgg16.pt")


def one_line_error(capsys, *args) -> str:
    with pytest.raises(SystemExit) as exit_info:
        project_script().main(
            [*args, "steps=1", "perceptual_weight=0", "pixel_weight=1", "w_avg_samples=10", "device=cpu"]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err.strip()


def test_target_errors_are_one_line(snapshot, tmp_path, capsys):
    missing = tmp_path / "missing.png"
    err = one_line_error(capsys, f"checkpoint={snapshot}", f"target={missing}", f"outdir={tmp_path}")
    assert err == f"error: target image {missing} does not exist"
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    err = one_line_error(capsys, f"checkpoint={snapshot}", f"target={broken}", f"outdir={tmp_path}")
    assert err.startswith(f"error: cannot decode image {broken}")
    small = tmp_path / "small.png"
    Image.new("RGB", (24, 8)).save(small)
    err = one_line_error(capsys, f"checkpoint={snapshot}", f"target={small}", f"outdir={tmp_path}")
    assert err == (
        f"error: target image {small} is 24x8, smaller than the generator's 16x16: "
        "pass allow_upscale=true to upscale it anyway"
    )
    assert not (tmp_path / "projected_w.npz").exists()


def test_small_target_upscales_when_allowed(tmp_path):
    small = tmp_path / "small.png"
    Image.new("RGB", (24, 8), (200, 10, 10)).save(small)
    target = load_target(small, 16, allow_upscale=True)
    assert target.shape == (3, 16, 16) and target[:, 8, 8].tolist() == [200, 10, 10]


def test_checkpoint_that_is_not_a_generator_is_one_line(face, tmp_path, capsys):
    foreign = tmp_path / "random.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    err = one_line_error(capsys, f"checkpoint={foreign}", f"target={face}", f"outdir={tmp_path}")
    assert err.startswith(f"error: {foreign} is not a StyleNAT checkpoint")
    inception = tmp_path / "inception.pt"
    torch.save(build_inception(0).state_dict(), inception)
    err = one_line_error(capsys, f"checkpoint={inception}", f"target={face}", f"outdir={tmp_path}")
    assert err.startswith(f"error: {inception} is not a StyleNAT checkpoint")


def test_training_state_is_a_generator(G, face, tmp_path, capsys):
    state = tmp_path / "training-state.pt"
    torch.save({"G_ema": G.state_dict(), "model_config": G.model_config, "step": 0}, state)
    out = tmp_path / "out"
    project_script().main(
        [f"checkpoint={state}", f"target={face}", f"outdir={out}", "steps=2", "perceptual_weight=0"]
        + ["pixel_weight=1"]
        + ["w_avg_samples=10", "device=cpu"]
    )
    assert (out / "projected_w.npz").is_file()


def test_help_names_the_config():
    assert project_script().main(["--help"]) == 0
