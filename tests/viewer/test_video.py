"""stylenat.video and scripts/video.py: gen_video-style loops, MP4 through imageio-ffmpeg, GIF without it."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stylenat import video
from stylenat.sampling import seed_latents, to_uint8

ROOT = Path(__file__).resolve().parents[2]


def test_frames_loop_through_the_keyframes(tiny_G):
    """4 seeds on a 2x1 grid: 2 keyframes per cell, 3 frames per transition -> 6 frames; every third frame
    is a keyframe's own image (the spline passes through them) and the loop returns to the start."""
    frames = list(video.video_frames(tiny_G, [0, 1, 2, 3], "2x1", 3, kind="cubic", truncation_psi=0.8))
    assert len(frames) == 6 and frames[0].shape == (16, 32, 3)
    ws = tiny_G.mapping(seed_latents([0, 1, 2, 3], tiny_G.z_dim), truncation_psi=0.8)
    keys = to_uint8(tiny_G.synthesis(ws))
    # seed i -> keyframe i // 2 of cell i % 2
    for frame, (left, right) in ((frames[0], (0, 1)), (frames[3], (2, 3))):
        assert np.abs(frame[:, :16].astype(int) - keys[left]).max() <= 1
        assert np.abs(frame[:, 16:].astype(int) - keys[right]).max() <= 1
    assert not np.array_equal(frames[1], frames[0])
    z_frames = list(video.video_frames(tiny_G, [0, 1], (1, 1), 2, space="z", kind="linear"))
    assert len(z_frames) == 4 and np.abs(z_frames[0].astype(int) - to_uint8(tiny_G(seed_latents([0], 16)))[0]).max() <= 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(seeds=[0, 1, 2], grid="2x1"), "seeds: 3 seeds do not fill a 2x1 grid"),
        (dict(seeds=[0], grid="0x1"), "grid="),
        (dict(seeds=[0], grid="big"), "grid="),
        (dict(seeds=[0], space="q"), "space="),
        (dict(seeds=[0], kind="quartic"), "kind="),
        (dict(seeds=[0], frames_per_transition=0), "frames_per_transition="),
        (dict(seeds=[0], class_idx=1), "class_idx=1: this generator is unconditional"),
    ],
)
def test_bad_arguments_are_one_line(tiny_G, kwargs, match):
    with pytest.raises(ValueError, match=match):
        next(video.video_frames(tiny_G, **kwargs))


def test_mp4_has_the_frame_count(tiny_G, tmp_path):
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    frames = video.video_frames(tiny_G, [0, 1, 2, 3], "2x1", 3)
    path = video.write_video(frames, tmp_path / "out.mp4", fps=12)
    assert path == tmp_path / "out.mp4" and not list(tmp_path.glob(".*tmp*"))
    assert imageio_ffmpeg.count_frames_and_secs(str(path))[0] == 6
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    assert meta["size"] == (32, 16) and meta["fps"] == 12
    first = np.frombuffer(next(reader), dtype=np.uint8).reshape(16, 32, 3)
    assert first.std() > 0  # a picture, not a blank frame


def test_gif_fallback_without_imageio_ffmpeg(tiny_G, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import fails as if it were not installed
    assert not video.ffmpeg_available()
    frames = video.video_frames(tiny_G, [0, 1], (1, 1), 4)
    with caplog.at_level("WARNING"):
        path = video.write_video(frames, tmp_path / "out.mp4", fps=10)
    assert path == tmp_path / "out.gif" and "imageio-ffmpeg is not installed" in caplog.text
    with Image.open(path) as gif:
        assert gif.n_frames == 8 and gif.size == (16, 16) and gif.info["duration"] == 100
    with pytest.raises(ValueError, match="format=mp4 needs imageio-ffmpeg"):
        video.write_video(iter([]), tmp_path / "x.mp4", fmt="mp4")


def test_strip_ends_are_the_seeds(tiny_G):
    for space in ("w", "z"):
        strip = video.strip_frames(tiny_G, 3, 4, steps=4, space=space, truncation_psi=0.7)
        ends = to_uint8(tiny_G(seed_latents([3, 4], 16), truncation_psi=0.7))
        assert strip.shape == (4, 16, 16, 3)
        assert np.abs(strip[0].astype(int) - ends[0]).max() <= 1 and np.abs(strip[-1].astype(int) - ends[1]).max() <= 1
    a, b = torch.randn(8), torch.randn(8)
    mid = video.slerp(a, b, torch.tensor([0.5]))[0]
    assert torch.isclose(mid.norm(), (a.norm() + b.norm()) / 2, rtol=0.2)  # slerp keeps the norm (about)


def run(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_video_script(tiny_snapshot, tmp_path):
    out = tmp_path / "loop.mp4"
    r = run("scripts/video.py", f"checkpoint={tiny_snapshot}", "seeds=0-3", "grid=2x1", "frames_per_transition=2",
            f"output={out}", "format=gif", "device=cpu")
    assert r.returncode == 0, r.stderr
    with Image.open(tmp_path / "loop.gif") as gif:
        assert gif.n_frames == 4 and gif.size == (32, 16)


def test_video_script_bad_seeds_is_one_line(tiny_snapshot, tmp_path, capsys):
    script = load_script("video")
    with pytest.raises(SystemExit) as exit_:
        script.main([f"checkpoint={tiny_snapshot}", "seeds=0-2", "grid=2x1", f"output={tmp_path / 'v.mp4'}"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: seeds: 3 seeds do not fill a 2x1 grid evenly (give a multiple of 2)"
    ]
    assert not list(tmp_path.iterdir())


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"{name}_script", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
