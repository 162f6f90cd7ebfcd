"""Turning a generator into pictures: seeds, grids, per-seed PNGs, style mixing and interpolation figures.

A class-conditional generator (``G.c_dim > 0``) takes a class with every call: ``class_idx`` here (or a
name of ``G.class_names``, ``resolve_class``); the metrics' generator function draws one per seed from the
data set's labels instead (``seeded_images_fn(label_pool=...)``).
"""

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stylenat.data.transforms import minus_one_one_to_uint8

PROJECTED_W_KEY = "w"  # the array in a projected_w .npz (stylenat.projection writes it)


def parse_seeds(spec):
    """'0-3,7' / [0, 1] / 5 -> [0, 1, 2, 3, 7]; a one-line ValueError for anything else."""
    if isinstance(spec, int):
        return [spec]
    if isinstance(spec, (list, tuple)) or hasattr(spec, "__iter__") and not isinstance(spec, str):
        out = []
        for item in spec:
            out.extend(parse_seeds(item))
        return out
    seeds = []
    for part in str(spec).replace(" ", "").split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ValueError(f"bad seeds {spec!r}: use a list like [0,1,5] or ranges like '0-15,20'")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise ValueError(f"bad seed range {part!r}: the end is before the start")
        seeds.extend(range(lo, hi + 1))
    return seeds


def seed_latents(seeds, z_dim, device="cpu"):
    """One z per seed, the StyleGAN way (numpy RandomState(seed).randn), so seeds mean the same on every device."""
    z = np.stack([np.random.RandomState(s).randn(z_dim) for s in seeds])
    return torch.from_numpy(z).float().to(device)


def class_onehot(G, class_idx, batch, device="cpu"):
    """The one-hot labels [batch, c_dim] of class ``class_idx`` for G (None for an unconditional G and no
    class); one-line ValueErrors for a class out of range, a conditional G without one, or a class given
    to an unconditional G."""
    c_dim = getattr(G, "c_dim", 0)
    if not c_dim:
        if class_idx is not None:
            raise ValueError(f"class_idx={class_idx}: this generator is unconditional (no classes)")
        return None
    if class_idx is None:
        raise ValueError(f"this generator is class-conditional: pass class_idx=0..{c_dim - 1}{_named(G)}")
    if (
        isinstance(class_idx, bool)
        or not isinstance(class_idx, (int, np.integer))
        or not 0 <= class_idx < c_dim
    ):
        raise ValueError(f"class_idx={class_idx!r}: expected an integer in 0..{c_dim - 1}{_named(G)}")
    c = torch.zeros(batch, c_dim, device=device)
    c[:, int(class_idx)] = 1
    return c


def _named(G) -> str:
    names = getattr(G, "class_names", None)
    return f" (classes: {', '.join(f'{i}={n}' for i, n in enumerate(names))})" if names else ""


def resolve_class(G, class_idx=None, class_name=None):
    """class_idx, or the index of ``class_name`` in ``G.class_names`` (one-line errors naming the choices)."""
    if class_name is None:
        return class_idx
    if class_idx is not None:
        raise ValueError(f"class_idx={class_idx} and class_name={class_name!r}: give one of them")
    if not getattr(G, "c_dim", 0):
        raise ValueError(f"class_name={class_name!r}: this generator is unconditional (no classes)")
    names = getattr(G, "class_names", None)
    if not names:
        raise ValueError(
            f"class_name={class_name!r}: this snapshot stores no class names; use class_idx=0..{G.c_dim - 1}"
        )
    if class_name not in names:
        raise ValueError(f"class_name={class_name!r}: unknown class; the classes are {', '.join(names)}")
    return list(names).index(class_name)


def seed_labels(seeds, label_pool, c_dim, device="cpu"):
    """One-hot labels, one per seed, each the class of a random item of ``label_pool`` (the data set's
    labels), drawn from numpy RandomState([1, seed]) (not z's stream): deterministic per seed."""
    pool = np.asarray(label_pool, dtype=np.int64).ravel()
    picks = [int(pool[np.random.RandomState([1, int(s)]).randint(len(pool))]) for s in seeds]
    return torch.nn.functional.one_hot(torch.tensor(picks, dtype=torch.int64), c_dim).float().to(device)


def seeded_labels_fn(G, device, class_idx=None, label_pool=None):
    """``seeds (list of int) -> one-hot labels`` [N, c_dim] (None for an unconditional G): a conditional G
    draws each seed's class from ``label_pool`` (the data set's labels, as StyleGAN2-ADA's metrics do), or
    uses ``class_idx`` for every sample."""
    if not getattr(G, "c_dim", 0):
        class_onehot(G, class_idx, 1, device)  # a class for an unconditional G: one line
        return lambda seeds: None
    if class_idx is None and label_pool is None:
        raise ValueError(
            f"a class-conditional generator (c_dim={G.c_dim}) needs labels for metrics: give class_idx=N or "
            "a labelled data set (its dataset.json)"
        )
    if class_idx is not None:
        class_onehot(G, class_idx, 1, device)  # checks it
        return lambda seeds: class_onehot(G, class_idx, len(seeds), device)
    return lambda seeds: seed_labels(seeds, label_pool, G.c_dim, device)


def seeded_images_fn(G, device, truncation_psi: float = 1.0, class_idx=None, label_pool=None):
    """``seeds (int tensor) -> images`` in [-1, 1], float32: the generator function metrics take (labels of
    a conditional G as :func:`seeded_labels_fn`)."""
    labels = seeded_labels_fn(G, device, class_idx, label_pool)

    def generate(seeds: torch.Tensor) -> torch.Tensor:
        seeds = seeds.tolist()
        return G(seed_latents(seeds, G.z_dim, device), labels(seeds), truncation_psi=truncation_psi).float()

    return generate


def to_uint8(images):
    """[-1, 1] NCHW float -> NHWC uint8 numpy, rounding like StyleGAN."""
    return minus_one_one_to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()


def make_grid(images_uint8, cols=None):
    """Tile NHWC uint8 images into one HWC array, row-major."""
    n, h, w, c = images_uint8.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
    for i, img in enumerate(images_uint8):
        r, col = divmod(i, cols)
        grid[r * h : (r + 1) * h, col * w : (col + 1) * w] = img
    return grid


def save_image(array, path):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@torch.no_grad()
def generate_images(
    G, seeds, truncation_psi=1.0, truncation_cutoff=None, batch_size=16, device="cpu", class_idx=None
):
    """Images in [-1, 1] for the given seeds, batch by batch (deterministic per seed, whatever the batch);
    ``class_idx``: the class of a conditional G (see ``class_onehot``)."""
    class_onehot(G, class_idx, 1, device)  # one-line errors before any work
    out = []
    for i in range(0, len(seeds), batch_size):
        z = seed_latents(seeds[i : i + batch_size], G.z_dim, device)
        c = class_onehot(G, class_idx, z.shape[0], device)
        out.append(G(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def style_mixing_figure(G, row_seeds, col_seeds, crossover, truncation_psi=1.0, device="cpu", class_idx=None):
    """StyleGAN's figure: column seeds give layers < crossover (coarse), row seeds give the rest."""
    if not 0 < crossover < G.n_latent:
        raise ValueError(f"style mixing crossover {crossover} must be between 1 and {G.n_latent - 1}")
    all_seeds = list(dict.fromkeys(row_seeds + col_seeds))
    c = class_onehot(G, class_idx, len(all_seeds), device)
    ws = G.mapping(seed_latents(all_seeds, G.z_dim, device), c, truncation_psi=truncation_psi)
    w_of = dict(zip(all_seeds, ws))
    img = lambda w: to_uint8(G.to_minus_one_one(G.synthesis(w.unsqueeze(0))).float())[0]  # noqa: E731
    size = G.resolution
    canvas = np.full(((len(row_seeds) + 1) * size, (len(col_seeds) + 1) * size, 3), 255, dtype=np.uint8)
    for j, cs in enumerate(col_seeds):
        canvas[0:size, (j + 1) * size : (j + 2) * size] = img(w_of[cs])
    for i, rs in enumerate(row_seeds):
        canvas[(i + 1) * size : (i + 2) * size, 0:size] = img(w_of[rs])
        for j, cs in enumerate(col_seeds):
            mixed = w_of[rs].clone()
            mixed[:crossover] = w_of[cs][:crossover]
            canvas[(i + 1) * size : (i + 2) * size, (j + 1) * size : (j + 2) * size] = img(mixed)
    return canvas


@torch.no_grad()
def interpolation_frames(G, seeds, steps=8, truncation_psi=1.0, device="cpu", class_idx=None):
    """Linear interpolation in W between consecutive seeds; returns NHWC uint8 frames."""
    if len(seeds) < 2:
        raise ValueError(f"interpolation needs at least two seeds, got {seeds}")
    c = class_onehot(G, class_idx, len(seeds), device)
    ws = G.mapping(seed_latents(seeds, G.z_dim, device), c, truncation_psi=truncation_psi)
    frames = []
    for a, b in zip(ws[:-1], ws[1:]):
        t = torch.linspace(0, 1, steps, device=ws.device)[:, None, None]
        frames.append(to_uint8(G.to_minus_one_one(G.synthesis(a.lerp(b, t))).float()))
    return np.concatenate(frames)


def load_projected_w(path, G) -> torch.Tensor:
    """A projected_w .npz (scripts/project.py) -> ws [N, num_ws, w_dim] for G; one-line errors."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"projected_w {path} does not exist")
    try:
        data = np.load(path)
    except (OSError, EOFError, ValueError) as err:  # not npy/npz, a pickle, or truncated
        raise ValueError(f"projected_w {path} is not a readable .npz: {err}") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"projected_w {path} is a bare array: expected an .npz holding {PROJECTED_W_KEY!r}")
    with data:
        if PROJECTED_W_KEY not in data.files:
            raise ValueError(f"projected_w {path} has no array {PROJECTED_W_KEY!r} (found {data.files})")
        w = data[PROJECTED_W_KEY]
    expected = [G.n_latent, G.w_dim]
    if w.ndim != 3 or list(w.shape[1:]) != expected:
        raise ValueError(
            f"projected_w {path} has shape {list(w.shape)}; this generator takes [N, {expected[0]}, {expected[1]}]"
        )
    return torch.from_numpy(w.astype(np.float32))


@torch.no_grad()
def render_projected_w(G, path, outdir, device="cpu") -> list[Path]:
    """generate.py with projected_w: one image per saved w (projected.png, or projectedNNNN.png for several)."""
    ws = load_projected_w(path, G).to(device)
    images = to_uint8(G.to_minus_one_one(G.synthesis(ws)).float())
    names = ["projected.png"] if len(images) == 1 else [f"projected{i:04d}.png" for i in range(len(images))]
    for name, img in zip(names, images):
        save_image(img, Path(outdir) / name)
    return [Path(outdir) / name for name in names]


@dataclass(frozen=True)
class MixingSettings:
    enabled: bool = False
    row_seeds: object = (85, 100, 75)
    col_seeds: object = (55, 821, 1789, 293)
    crossover: int = 4


@dataclass(frozen=True)
class InterpolationSettings:
    enabled: bool = False
    steps: int = 8
    gif: bool = True


@dataclass(frozen=True)
class GenerateConfig:
    """generate.py's keys (configs/generate.yaml), typed and checked."""

    checkpoint: object
    seeds: object = "0-15"
    projected_w: str | None = None
    outdir: str = "generated"
    truncation_psi: float = 1.0
    truncation_cutoff: int | None = None
    class_idx: int | None = None
    class_name: str | None = None
    grid: bool = True
    per_seed: bool = True
    grid_cols: int | None = None
    batch: int = 16
    device: str = "auto"
    dtype: str = "fp32"
    mixing: MixingSettings = MixingSettings()
    interpolation: InterpolationSettings = InterpolationSettings()


def parse_generate_config(cfg) -> GenerateConfig:
    """The composed generate config -> GenerateConfig; one line naming the key on a bad value."""
    from stylenat.config_checks import typed

    return cfg if isinstance(cfg, GenerateConfig) else typed(GenerateConfig, cfg)


def run_generate(cfg):
    """generate.py's body: per-seed PNGs, a grid, and optional mixing/interpolation figures."""
    from stylenat.distributed import resolve_device
    from stylenat.reference import load_generator

    cfg = parse_generate_config(cfg)
    device = resolve_device(cfg.device)
    G = load_generator(cfg.checkpoint, device=device, dtype=cfg.dtype)
    outdir = Path(cfg.outdir)
    if cfg.projected_w:
        if cfg.mixing.enabled or cfg.interpolation.enabled:
            raise ValueError("projected_w renders saved ws only: turn mixing and interpolation off")
        outdir.mkdir(parents=True, exist_ok=True)
        render_projected_w(G, cfg.projected_w, outdir, device)
        return outdir
    seeds = parse_seeds(cfg.seeds)
    class_idx = resolve_class(G, cfg.class_idx, cfg.class_name)
    class_onehot(G, class_idx, 1, device)  # a missing or foreign class fails before outdir is made
    outdir.mkdir(parents=True, exist_ok=True)
    images = to_uint8(
        generate_images(G, seeds, cfg.truncation_psi, cfg.truncation_cutoff, cfg.batch, device, class_idx)
    )
    if cfg.per_seed:
        for seed, img in zip(seeds, images):
            save_image(img, outdir / f"seed{seed:04d}.png")
    if cfg.grid:
        save_image(make_grid(images, cfg.grid_cols), outdir / "grid.png")
    if cfg.mixing.enabled:
        figure = style_mixing_figure(
            G,
            parse_seeds(cfg.mixing.row_seeds),
            parse_seeds(cfg.mixing.col_seeds),
            cfg.mixing.crossover,
            cfg.truncation_psi,
            device,
            class_idx,
        )
        save_image(figure, outdir / "mixing.png")
    if cfg.interpolation.enabled:
        frames = interpolation_frames(
            G, seeds, cfg.interpolation.steps, cfg.truncation_psi, device, class_idx
        )
        save_image(make_grid(frames, cols=cfg.interpolation.steps), outdir / "interpolation.png")
        if cfg.interpolation.gif:
            pil = [Image.fromarray(f) for f in frames]
            pil[0].save(
                outdir / "interpolation.gif", save_all=True, append_images=pil[1:], duration=80, loop=0
            )
    return outdir
