"""Interpolation videos and strips over seeds: StyleGAN3's ``gen_video.py`` on our generators.

A video is a grid of loops: the seeds fill ``grid_w x grid_h`` cells with ``len(seeds) / cells`` keyframes
each (seed i goes to keyframe i // cells, cell i % cells), every cell interpolates through its keyframes
and back to the first (``kind``: cubic or linear spline, periodic), ``frames_per_transition`` frames from
one keyframe to the next, so a video has ``keyframes x frames_per_transition`` frames. ``space=w``
interpolates the mapped (truncated) ws, ``space=z`` the latents, each frame then mapped. MP4 (H.264)
through ``imageio-ffmpeg`` (its wheel carries the encoder); without it, or with ``fmt=gif``, a GIF through
Pillow. The strip (the viewer's interpolation panel) goes straight from seed a to seed b: lerp in W, slerp
in Z (norm-preserving, as perceptual path length samples Z).
"""

from __future__ import annotations

import itertools
import logging
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stylenat.files import atomic_write
from stylenat.sampling import class_onehot, make_grid, parse_seeds, seed_latents, to_uint8

logger = logging.getLogger(__name__)

SPACES = ("w", "z")
KINDS = ("cubic", "linear")
FORMATS = ("auto", "mp4", "gif")
MAX_FRAMES = 100_000  # a guard against a typo in frames_per_transition, not a limit on real videos
WRAPS = 2  # keyframe copies on each side of the loop, so the spline is periodic (gen_video's wraps)


def class_condition(G, class_idx, batch: int, device) -> dict:
    """``{"c": one-hot [batch, c_dim]}`` for a conditional generator (class 0 when none is chosen: the
    viewer's and the video's default), ``{}`` for an unconditional one; the keyword arguments G and
    G.mapping take. One-line ValueError naming class_idx (``stylenat.sampling.class_onehot``)."""
    if getattr(G, "c_dim", 0) and class_idx is None:
        class_idx = 0
    c = class_onehot(G, class_idx, batch, device)
    return {} if c is None else {"c": c}


def parse_grid(grid) -> tuple[int, int]:
    """'WxH' (or [W, H]) -> (W, H), both >= 1; one-line ValueError naming grid."""
    if isinstance(grid, str):
        m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", grid)
        values = (int(m.group(1)), int(m.group(2))) if m else None
    else:
        values = tuple(int(v) for v in grid) if hasattr(grid, "__len__") and len(grid) == 2 else None
    if values is None or min(values) < 1:
        raise ValueError(f"grid={grid!r}: expected WxH with W, H >= 1 (e.g. 2x2)")
    return values


def check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name}={value!r}: expected one of {', '.join(choices)}")
    return value


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between rows a, b [D] at t [N] -> [N, D] (lerp where they are parallel)."""
    a_n, b_n = a / a.norm(), b / b.norm()
    omega = torch.arccos((a_n * b_n).sum().clamp(-1, 1))
    t = t[:, None]
    if omega.abs() < 1e-6:
        return a.lerp(b, t)
    so = torch.sin(omega)
    return (torch.sin((1 - t) * omega) / so) * a + (torch.sin(t * omega) / so) * b


@torch.no_grad()
def strip_frames(G, seed_a, seed_b, steps=8, space="w", truncation_psi=1.0, truncation_cutoff=None,
                 class_idx=None, device="cpu") -> np.ndarray:
    """``steps`` frames (NHWC uint8) from seed a to seed b, both ends included."""
    check_choice("space", space, SPACES)
    if steps < 2:
        raise ValueError(f"steps={steps}: a strip needs at least 2 frames")
    z = seed_latents([seed_a, seed_b], G.z_dim, device)
    t = torch.linspace(0, 1, steps, device=device)
    truncation = dict(truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
    if space == "w":
        ws = G.mapping(z, **truncation, **class_condition(G, class_idx, 2, device))
        ws = ws[0].lerp(ws[1], t[:, None, None])
    else:
        ws = G.mapping(slerp(z[0], z[1], t), **truncation, **class_condition(G, class_idx, steps, device))
    return to_uint8(G.to_minus_one_one(G.synthesis(ws)).float())


def loop_spline(keyframes: np.ndarray, kind: str = "cubic"):
    """keyframes [cells, K, ...] -> f(t) [cells, ...], periodic in t with period K (f(k) = keyframe k)."""
    import scipy.interpolate

    cells, K = keyframes.shape[:2]
    x = np.arange(-K * WRAPS, K * (WRAPS + 1))
    y = np.tile(np.moveaxis(keyframes, 1, 0), [2 * WRAPS + 1] + [1] * (keyframes.ndim - 1))
    return scipy.interpolate.interp1d(x, y, kind=kind, axis=0)


@torch.no_grad()
def video_frames(G, seeds, grid=(1, 1), frames_per_transition=60, space="w", kind="cubic",
                 truncation_psi=1.0, truncation_cutoff=None, class_idx=None, device="cpu"):
    """gen_video's frames: an iterator of HWC uint8 grids, ``keyframes x frames_per_transition`` of them
    (see the module docstring); checks every argument before the first frame."""
    seeds = parse_seeds(seeds)
    grid_w, grid_h = parse_grid(grid)
    check_choice("space", space, SPACES)
    check_choice("kind", kind, KINDS)
    cells = grid_w * grid_h
    if not seeds or len(seeds) % cells:
        raise ValueError(f"seeds: {len(seeds)} seeds do not fill a {grid_w}x{grid_h} grid evenly "
                         f"(give a multiple of {cells})")
    if not isinstance(frames_per_transition, int) or frames_per_transition < 1:
        raise ValueError(f"frames_per_transition={frames_per_transition!r}: expected an integer >= 1")
    K = len(seeds) // cells
    if K * frames_per_transition > MAX_FRAMES:
        raise ValueError(f"frames_per_transition: {K * frames_per_transition} frames is over {MAX_FRAMES}")
    z = seed_latents(seeds, G.z_dim, device)
    truncation = dict(truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
    condition = class_condition(G, class_idx, cells, device)
    keys = z if space == "z" else G.mapping(z, **truncation, **class_condition(G, class_idx, len(seeds), device))
    # seed i -> keyframe i // cells of cell i % cells
    keys = keys.float().cpu().numpy().reshape(K, cells, *keys.shape[1:]).swapaxes(0, 1)
    spline = loop_spline(keys, kind)
    for frame in range(K * frames_per_transition):
        latent = torch.from_numpy(spline(frame / frames_per_transition)).float().to(device)
        ws = G.mapping(latent, **truncation, **condition) if space == "z" else latent
        images = to_uint8(G.to_minus_one_one(G.synthesis(ws)).float())
        yield make_grid(images, cols=grid_w)


def ffmpeg_available() -> bool:
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_format(fmt: str) -> str:
    """auto -> mp4 when imageio-ffmpeg is installed, else gif (with a log line); mp4 without it: one line."""
    check_choice("format", fmt, FORMATS)
    if fmt == "gif":
        return "gif"
    if ffmpeg_available():
        return "mp4"
    if fmt == "mp4":
        raise ValueError("format=mp4 needs imageio-ffmpeg: pip install 'stylenat[viewer]' (or format=gif)")
    logger.warning("imageio-ffmpeg is not installed: writing a GIF (pip install 'stylenat[viewer]' for MP4)")
    return "gif"


def write_video(frames, path, fps: int = 30, fmt: str = "auto") -> Path:
    """Encode an iterable of HWC uint8 frames to ``path`` (its suffix set to .mp4 or .gif by the format
    chosen) atomically; returns the path written."""
    fmt = resolve_format(fmt)
    if not isinstance(fps, int) or fps < 1:
        raise ValueError(f"fps={fps!r}: expected an integer >= 1")
    path = Path(path).with_suffix(f".{fmt}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "gif":
        pil = [Image.fromarray(f) for f in frames]
        atomic_write(path, lambda f: pil[0].save(f, "gif", save_all=True, append_images=pil[1:],
                                                 duration=round(1000 / fps), loop=0, optimize=False))
        return path
    import imageio_ffmpeg

    tmp = path.with_name(f".{path.name}.tmp.mp4")
    writer = None
    try:
        for frame in frames:
            if writer is None:
                h, w = frame.shape[:2]
                writer = imageio_ffmpeg.write_frames(
                    str(tmp), (w, h), fps=fps, codec="libx264", pix_fmt_out="yuv420p", quality=8,
                    macro_block_size=2, ffmpeg_log_level="error",
                )
                writer.send(None)
            writer.send(np.ascontiguousarray(frame))
        if writer is None:
            raise ValueError("no frames to write")
        writer.close()
        writer = None
        tmp.replace(path)
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    return path


def video_bytes(frames, fps: int = 30, fmt: str = "auto") -> tuple[bytes, str]:
    """The encoded video in memory (for the viewer's download) and its format (mp4 | gif)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="stylenat-video-") as tmp:
        path = write_video(frames, Path(tmp) / "video", fps, fmt)
        return path.read_bytes(), path.suffix[1:]


def run_video(cfg) -> Path:
    """scripts/video.py's body: load the snapshot, write the video, return its path."""
    from stylenat.distributed import resolve_device
    from stylenat.reference import load_generator

    fmt = resolve_format(cfg.format)  # before the generator loads: a missing encoder is one line up front
    device = resolve_device(cfg.device)
    G = load_generator(cfg.checkpoint, device=device, dtype=cfg.dtype)
    frames = video_frames(
        G, cfg.seeds, cfg.grid, cfg.frames_per_transition, cfg.space, cfg.kind,
        cfg.truncation_psi, cfg.truncation_cutoff, cfg.class_idx, device,
    )
    first = next(frames)  # every argument is checked here, before the output file is opened
    path = write_video(itertools.chain([first], frames), cfg.output, cfg.fps, fmt)
    logger.info("wrote %s", path)
    return path
