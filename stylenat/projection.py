"""GAN inversion: the w (or per-layer w+) whose image best matches a target photo.

stylegan2-ada-pytorch's ``projector.py``, adapted. StyleNAT has no noise inputs, so only w is optimised
(the original also fits and regularises noise maps). w_avg and w_std come from 10,000 z through the
mapping network of the generator given (G_ema in snapshots), never a running mean. Adam starts at w_avg;
Gaussian noise on w (a fraction of w_std) decays to zero over the first ``noise_ramp_length`` of the
steps; the learning rate ramps up over ``lr_rampup_length`` and down (cosine) over the last
``lr_rampdown_length``. The loss is

    perceptual_weight * perceptual distance + pixel_weight * pixel MSE + w_reg_weight * w regulariser

and by default it is the reference's objective, the LPIPS-VGG16 distance alone (``pixel_weight`` and
``w_reg_weight`` 0): the pixel MSE on [-1, 1] images and the regulariser ``|w - w_avg|^2 / w_std^2`` (1 for
a typical mapped w) are options of ours.

Perceptual distances, each named in every output: LPIPS-VGG16 (``stylenat.metrics.vgg16``, NVIDIA's file
from ``vgg16=``, env ``STYLENAT_VGG16`` or the cache), else, with a one-line warning, the Inception network
the metrics ship (offline): LPIPS's recipe without its learned weights (features unit-normalised per
position, squared differences summed over channels, averaged over positions) on the ``mixed_2`` (35x35) and
``mixed_7`` (17x17) blocks, ``INCEPTION_DISTANCE``.
"""

from __future__ import annotations

import io
import json
import logging
import math
from dataclasses import asdict, dataclass, field, fields, make_dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from stylenat.data.errors import DatasetError
from stylenat.data.images import fit_square, load_image_file
from stylenat.data.transforms import minus_one_one_to_uint8, normalize, pil_to_uint8_tensor
from stylenat.files import atomic_write_bytes, atomic_write_text
from stylenat.sampling import PROJECTED_W_KEY, save_image, to_uint8

log = logging.getLogger(__name__)

INCEPTION_LAYERS = ("mixed_2", "mixed_7")
INCEPTION_DISTANCE = "inception_unit_l2_mixed_2_mixed_7"
VGG_DISTANCE = "lpips_vgg16"
INCEPTION_SIZE = 299
W_STATS_SEED = 123  # the original's RandomState for the w statistics


@dataclass(frozen=True)
class ProjectionOptions:
    """The optimisation; defaults are the original's (the pixel and w terms are ours, off by default)."""

    steps: int = 1000
    w_plus: bool = False
    initial_learning_rate: float = 0.1
    initial_noise_factor: float = 0.05
    lr_rampdown_length: float = 0.25
    lr_rampup_length: float = 0.05
    noise_ramp_length: float = 0.75
    perceptual_weight: float = 1.0
    pixel_weight: float = 0.0
    w_reg_weight: float = 0.0
    w_avg_samples: int = 10000
    seed: int = 0
    frame_every: int = 0  # keep a progress frame every N steps (0: none)

    def __post_init__(self):
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1:
            raise ValueError(f"steps={self.steps!r}: expected a positive integer")
        for name in ("perceptual_weight", "pixel_weight", "w_reg_weight", "initial_noise_factor"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected a value >= 0")
        if self.initial_learning_rate <= 0:
            raise ValueError(f"initial_learning_rate={self.initial_learning_rate!r}: expected a value > 0")
        if self.perceptual_weight == self.pixel_weight == self.w_reg_weight == 0:
            raise ValueError(
                "perceptual_weight, pixel_weight and w_reg_weight are all 0: nothing to fit "
                "(pixel_weight=1 fits pixels alone)"
            )
        if self.w_avg_samples < 2:
            raise ValueError(f"w_avg_samples={self.w_avg_samples!r}: expected at least 2")


@dataclass
class Projection:
    """What ``project`` found: ``w`` [1, num_ws, w_dim], its image in [-1, 1], the loss of every step,
    the final distances and the progress frames (NHWC uint8, target | projection)."""

    w: torch.Tensor
    image: torch.Tensor
    losses: list[float]
    distances: dict
    frames: list[np.ndarray] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------------
# Target and distances


def load_target(path, resolution: int, allow_upscale: bool = False) -> torch.Tensor:
    """The target photo as uint8 [3, R, R]: the data package's reader, center-cropped and resized.

    A target whose short side is below ``resolution`` is refused unless ``allow_upscale``: the projection
    would then chase the blur of the upscaling, not a photo the generator could have made.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"target image {path} does not exist")
    if not path.is_file():
        raise DatasetError(f"target image {path} is not a file")
    image = load_image_file(path, None)
    if min(image.size) < resolution and not allow_upscale:
        w, h = image.size
        raise DatasetError(
            f"target image {path} is {w}x{h}, smaller than the generator's {resolution}x{resolution}: "
            "pass allow_upscale=true to upscale it anyway"
        )
    return pil_to_uint8_tensor(fit_square(image, resolution))


def _unit(features: torch.Tensor) -> torch.Tensor:
    """LPIPS's normalisation: every position's feature vector to unit length."""
    return features / (features.square().sum(1, keepdim=True).sqrt() + 1e-10)


class InceptionDistance:
    """LPIPS without learned weights on two Inception blocks (see the module docstring); images in [-1, 1]."""

    name = INCEPTION_DISTANCE

    def __init__(self, inception):
        self.inception = inception
        self.weights_sha256 = inception.weights_sha256

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        size = INCEPTION_SIZE
        mode = "area" if images.shape[-1] > size else "bilinear"
        x = F.interpolate(
            images, size=(size, size), mode=mode, **({} if mode == "area" else {"align_corners": False})
        )
        x = x * (127.5 / 128)  # the stylegan protocol's (pixel - 128) / 128 of a [-1, 1] image
        out = []
        for name, layer in self.inception.layers.named_children():
            x = layer(x)
            if name in INCEPTION_LAYERS:
                out.append(_unit(x))
                if len(out) == len(INCEPTION_LAYERS):
                    return out
        raise ValueError(f"the Inception network has no blocks {INCEPTION_LAYERS}")

    def reference(self, target: torch.Tensor):
        with torch.no_grad():
            return self.features(target)

    def __call__(self, images: torch.Tensor, reference) -> torch.Tensor:
        return sum(
            (a - b).square().sum(1).mean((1, 2)) for a, b in zip(self.features(images), reference)
        ).mean()


class VGGDistance:
    """LPIPS-VGG16 (``stylenat.metrics.vgg16``, NVIDIA's file) as StyleGAN2-ADA's projector runs it:
    images above 256 px area-resized to 256 first; the target's embedding computed once."""

    name = VGG_DISTANCE

    def __init__(self, vgg):
        self.vgg = vgg
        self.weights_sha256 = vgg.sha256

    def embedding(self, images: torch.Tensor) -> torch.Tensor:
        pixels = (images + 1) * 127.5
        if pixels.shape[-1] > 256:
            pixels = F.interpolate(pixels, size=(256, 256), mode="area")
        return self.vgg.lpips_features(pixels)

    def reference(self, target: torch.Tensor):
        with torch.no_grad():
            return self.embedding(target)

    def __call__(self, images: torch.Tensor, reference) -> torch.Tensor:
        return (self.embedding(images) - reference).square().sum(1).mean()


def build_distance(vgg16=None, inception_weights=None, device="cpu"):
    """LPIPS-VGG16 (the reference's distance) from ``vgg16``, env ``STYLENAT_VGG16`` or the cache; without
    any, the Inception distance on the shipped weights, with a one-line warning."""
    from stylenat.metrics.vgg16 import VGG16WeightsError, load_vgg16, vgg16_path

    if vgg16 is None:
        try:
            vgg16 = vgg16_path(None)
        except VGG16WeightsError:
            vgg16 = None
    if vgg16 is not None:
        vgg = load_vgg16(vgg16, device=device)  # VGG16WeightsError: a ValueError, one line at the CLI
        if vgg.source != "nvidia":
            raise ValueError(
                f"vgg16={vgg16} is a torchvision state dict, which has no LPIPS heads: "
                "LPIPS needs NVIDIA's TorchScript vgg16.pt"
            )
        return VGGDistance(vgg)
    from stylenat.metrics import load_inception

    log.warning(
        "no VGG16 weights (vgg16=, env STYLENAT_VGG16 or the cache): projecting with %s, not the "
        "reference's LPIPS-VGG16",
        INCEPTION_DISTANCE,
    )
    return InceptionDistance(load_inception(inception_weights, device=device))


# ----------------------------------------------------------------------------------------------------------
# The optimisation


@torch.no_grad()
def w_statistics(G, samples: int = 10000, device="cpu") -> tuple[torch.Tensor, float]:
    """(w_avg [w_dim], w_std), as the reference projector: the mean of ``samples`` z mapped by G's mapping
    network (not the running mean training kept; a class-conditional G maps the classes in turn), and their
    RMS distance from it (the scale of the noise and of the regulariser)."""
    z = torch.from_numpy(np.random.RandomState(W_STATS_SEED).randn(samples, G.z_dim)).float().to(device)
    if getattr(G, "c_dim", 0):
        c = torch.nn.functional.one_hot(torch.arange(samples) % G.c_dim, G.c_dim).float().to(device)
        w = torch.cat([G.mapping_net(zc, cc) for zc, cc in zip(z.split(4096), c.split(4096))])
    else:
        w = torch.cat([G.mapping_net(chunk) for chunk in z.split(4096)])
    w_avg = w.mean(0)
    w_std = float((w - w_avg).square().sum(1).mean().sqrt())
    return w_avg, w_std


def learning_rate(step: int, options: ProjectionOptions) -> float:
    """The original's schedule: linear ramp-up, cosine ramp-down, both as fractions of the steps."""
    t = step / options.steps
    ramp = min(1.0, (1.0 - t) / options.lr_rampdown_length)
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    ramp = ramp * min(1.0, t / options.lr_rampup_length)
    return options.initial_learning_rate * ramp


def _side_by_side(target: torch.Tensor, image: torch.Tensor) -> np.ndarray:
    return to_uint8(torch.cat([target, image.detach().float().cpu()], dim=-1))[0]


def psnr_db(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR of two [-1, 1] images as the uint8 pictures they are saved as (peak 255)."""
    mse = (minus_one_one_to_uint8(a).float() - minus_one_one_to_uint8(b).float()).square().mean().item()
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def project(G, target: torch.Tensor, options: ProjectionOptions, distance=None) -> Projection:
    """Invert ``target`` (uint8 [3, R, R] at G's resolution) into W (or W+ with ``options.w_plus``).

    ``distance`` is the perceptual term (``build_distance``); None (or perceptual_weight 0) leaves it out.
    """
    device = G.w_avg.device
    if tuple(target.shape) != (3, G.resolution, G.resolution):
        raise ValueError(
            f"target of shape {list(target.shape)}: expected [3, {G.resolution}, {G.resolution}]"
        )
    use_distance = distance is not None and options.perceptual_weight > 0
    target_image = normalize(target[None].to(device), "minus_one_one")
    reference = distance.reference(target_image) if use_distance else None
    w_avg, w_std = w_statistics(G, options.w_avg_samples, device)
    num_opt = G.n_latent if options.w_plus else 1
    w_opt = w_avg.view(1, 1, -1).repeat(1, num_opt, 1).requires_grad_(True)
    optimizer = torch.optim.Adam([w_opt], betas=(0.9, 0.999), lr=options.initial_learning_rate)
    noise_gen = torch.Generator(device=device).manual_seed(options.seed)
    target_cpu = target_image.cpu()

    def render(w):
        return G.to_minus_one_one(G.synthesis(w.expand(-1, G.n_latent, -1)))

    def terms(image, w):
        out = {"pixel_mse": F.mse_loss(image, target_image)}
        out["w_reg"] = (w - w_avg).square().sum(-1).mean() / w_std**2
        if use_distance:
            out["perceptual"] = distance(image, reference)
        return out

    weights = {"pixel_mse": options.pixel_weight, "w_reg": options.w_reg_weight}
    weights["perceptual"] = options.perceptual_weight
    losses, frames = [], []
    for step in range(options.steps):
        t = step / options.steps
        noise_scale = (
            w_std * options.initial_noise_factor * max(0.0, 1.0 - t / options.noise_ramp_length) ** 2
        )
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, options)
        noise = torch.randn(w_opt.shape, generator=noise_gen, device=device) * noise_scale
        image = render(w_opt + noise)
        loss = sum(weights[k] * v for k, v in terms(image, w_opt).items())
        # the gradient of w alone: G's own parameters never collect one, whatever their requires_grad
        (w_opt.grad,) = torch.autograd.grad(loss, [w_opt])
        optimizer.step()
        losses.append(loss.item())
        if options.frame_every and step % options.frame_every == 0:
            frames.append(_side_by_side(target_cpu, image))
        if step % max(1, options.steps // 10) == 0 or step == options.steps - 1:
            log.info("step %d/%d: loss %.5g", step + 1, options.steps, losses[-1])
    w = w_opt.detach().expand(-1, G.n_latent, -1).clone()
    with torch.no_grad():
        image = render(w)
        final = {k: float(v) for k, v in terms(image, w).items()}
    final["psnr_db"] = psnr_db(image, target_image)
    if options.frame_every:
        frames.append(_side_by_side(target_cpu, image))
    return Projection(w=w.cpu(), image=image.cpu(), losses=losses, distances=final, frames=frames)


# ----------------------------------------------------------------------------------------------------------
# Outputs


def save_projected_w(path, w: torch.Tensor) -> Path:
    """``w`` [N, num_ws, w_dim] as an .npz under key ``w`` (what generate.py's projected_w reads)."""
    buffer = io.BytesIO()
    np.savez(buffer, **{PROJECTED_W_KEY: w.detach().cpu().float().numpy()})
    return atomic_write_bytes(path, buffer.getvalue())


def write_outputs(outdir, projection: Projection, target: torch.Tensor, record: dict, gif: bool) -> dict:
    """projected_w.npz, proj.png (target | projection), projection.json and optionally proj.gif."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    target_image = normalize(target[None], "minus_one_one")
    save_projected_w(outdir / "projected_w.npz", projection.w)
    save_image(_side_by_side(target_image, projection.image), outdir / "proj.png")
    if gif and projection.frames:
        from PIL import Image

        frames = [Image.fromarray(f) for f in projection.frames]
        buffer = io.BytesIO()
        frames[0].save(buffer, format="gif", save_all=True, append_images=frames[1:], duration=60, loop=0)
        atomic_write_bytes(outdir / "proj.gif", buffer.getvalue())
    atomic_write_text(outdir / "projection.json", json.dumps(record, indent=1) + "\n")
    return record


def _options(self) -> ProjectionOptions:
    """The optimisation's options (``gif_every`` becomes ``frame_every`` with ``gif``)."""
    keys = {f.name for f in fields(ProjectionOptions)} - {"frame_every"}
    frame_every = self.gif_every if self.gif else 0
    return ProjectionOptions(**{k: getattr(self, k) for k in keys}, frame_every=frame_every)


# scripts/project.py's keys (configs/project.yaml), typed and checked: the photo, the outputs and the distance
# networks around ProjectionOptions' own keys (the same names and defaults).
ProjectConfig = make_dataclass(
    "ProjectConfig",
    [
        ("checkpoint", "object"),
        ("target", "object"),
        ("outdir", "object", field(default="projection")),
        ("allow_upscale", "bool", field(default=False)),
        *((f.name, f.type, field(default=f.default)) for f in fields(ProjectionOptions) if f.name != "frame_every"),
        ("vgg16", "str | None", field(default=None)),
        ("inception_weights", "str | None", field(default=None)),
        ("gif", "bool", field(default=False)),
        ("gif_every", "int", field(default=10)),
        ("device", "str", field(default="auto")),
    ],
    frozen=True,
    namespace={"options": _options},
)
ProjectConfig.__module__ = __name__


def parse_project_config(cfg) -> ProjectConfig:
    """The composed (or plain) project config -> ProjectConfig; one line naming the key on a bad value."""
    from stylenat.config_checks import typed

    return cfg if isinstance(cfg, ProjectConfig) else typed(ProjectConfig, dict(cfg))


def run_projection(cfg) -> dict:
    """scripts/project.py's body (``cfg``: configs/project.yaml's keys, or a ProjectConfig): the record it
    writes."""
    from stylenat.distributed import resolve_device
    from stylenat.reference import load_generator

    cfg = parse_project_config(cfg)
    device = resolve_device(cfg.device)
    G = load_generator(cfg.checkpoint, device=device)
    target = load_target(cfg.target, G.resolution, cfg.allow_upscale)
    options = cfg.options()
    distance = None
    if options.perceptual_weight > 0:
        distance = build_distance(cfg.vgg16, cfg.inception_weights, device)
    projection = project(G, target, options, distance)
    record = {
        "checkpoint": str(cfg.checkpoint),
        "target": str(cfg.target),
        "resolution": G.resolution,
        "space": "w_plus" if options.w_plus else "w",
        "perceptual_distance": distance.name if distance is not None else None,
        "perceptual_weights_sha256": distance.weights_sha256 if distance is not None else None,
        "options": asdict(options),
        "distances": projection.distances,
        "losses": projection.losses,
    }
    return write_outputs(cfg.outdir, projection, target, record, cfg.gif)
