"""Perceptual path length (Karras et al. 2019), as stylegan3's ``metrics/perceptual_path_length.py`` computes it.

================  =====  ========  ====  =====================================================
name              space  sampling  crop  note
================  =====  ========  ====  =====================================================
ppl_zfull         z      full      yes   t ~ U[0, 1); slerp in Z, then map
ppl_wfull         w      full      yes   map, then lerp in W
ppl_zend          z      end       yes   t = 0
ppl_wend          w      end       yes   t = 0
ppl2_wend         w      end       no    StyleGAN2-ADA's headline PPL (no face crop)
================  =====  ========  ====  =====================================================

Per sample: two latents and t, the images at t and t + epsilon (1e-4); the face crop (c = H // 8,
``image[..., 3c:7c, 2c:6c]``) when on; images of a generator above 256 px box-downsampled by
resolution // 256; pixels to [0, 255]; distance = squared LPIPS-VGG16 embedding difference / epsilon^2. The
metric is the mean of the distances between their 1st (numpy ``lower``) and 99th (``higher``) percentiles,
over 50,000 samples (``num_gen`` smaller for quick runs, recorded and labelled). Always fp32 with TF32 off.

LPIPS-VGG16 is NVIDIA's ``vgg16.pt``, found like ``pr50k3_full``'s (:func:`stylenat.metrics.vgg16.load_vgg16`).
Sample i draws its latents from ``numpy.random.RandomState(seed_start + i)`` (z0, z1, then t), so a result
does not depend on the batch size or the number of processes.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import numpy as np
import torch
from tqdm.auto import tqdm

from stylenat.distributed import all_gather_object, rank_world
from stylenat.ops.precision import dtype_name, full_fp32

logger = logging.getLogger(__name__)

EPSILON = 1e-4
DOWNSAMPLE_TO = 256


@dataclass(frozen=True)
class PPLSpec:
    name: str
    space: str  # "z" | "w"
    sampling: str  # "full" | "end"
    crop: bool
    num_gen: int = 50000
    epsilon: float = EPSILON
    kind: str = "ppl"
    network: str = "vgg16"
    description: str = ""


PPL_METRICS: dict[str, PPLSpec] = {
    s.name: s
    for s in [
        PPLSpec("ppl_zfull", "z", "full", True, description="PPL in Z, t ~ U[0, 1), face crop (StyleGAN)"),
        PPLSpec("ppl_wfull", "w", "full", True, description="PPL in W, t ~ U[0, 1), face crop (StyleGAN)"),
        PPLSpec("ppl_zend", "z", "end", True, description="PPL in Z at the path ends, face crop (StyleGAN)"),
        PPLSpec("ppl_wend", "w", "end", True, description="PPL in W at the path ends, face crop (StyleGAN)"),
        PPLSpec("ppl2_wend", "w", "end", False, description="PPL in W at the path ends, no crop (StyleGAN2)"),
    ]
}


def check_ppl_dtype(name: str, dtype) -> None:
    """PPL differentiates images over a step of 1e-4: it runs in fp32 only (one-line error otherwise)."""
    if dtype_name(dtype) != "fp32":
        raise ValueError(
            f"{name} runs in fp32 only (a 1e-4 step drowns in bf16/fp16 rounding): got "
            f"dtype={dtype_name(dtype)}; rerun with dtype=fp32"
        )


# ----------------------------------------------------------------------------------------------------------
# The pieces, each checked against an independent reference in tests/metrics/test_ppl.py


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of the directions of ``a`` and ``b`` [N, D] at ``t`` [N, 1] (unit result)."""
    a = a / a.norm(dim=-1, keepdim=True)
    b = b / b.norm(dim=-1, keepdim=True)
    d = (a * b).sum(dim=-1, keepdim=True)
    p = t * torch.acos(d)
    c = b - d * a
    c = c / c.norm(dim=-1, keepdim=True)
    out = a * torch.cos(p) + c * torch.sin(p)
    return out / out.norm(dim=-1, keepdim=True)


def face_crop(images: torch.Tensor) -> torch.Tensor:
    """The FFHQ face region: with c = H // 8, rows 3c..7c and columns 2c..6c."""
    c = images.shape[2] // 8
    return images[:, :, c * 3 : c * 7, c * 2 : c * 6]


def box_downsample(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Mean over factor x factor boxes, factor = resolution // 256 (the generator's resolution, as stylegan3)."""
    factor = resolution // DOWNSAMPLE_TO
    if factor <= 1:
        return images
    n, c, h, w = images.shape
    return images.reshape(n, c, h // factor, factor, w // factor, factor).mean((3, 5))


def trimmed_mean(distances: np.ndarray) -> float:
    """Mean of the values between the 1st (``lower``) and 99th (``higher``) percentiles, both kept."""
    lo = np.percentile(distances, 1, method="lower")
    hi = np.percentile(distances, 99, method="higher")
    return float(distances[(distances >= lo) & (distances <= hi)].mean())


def sample_latents(seeds, z_dim: int, sampling: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(z0, z1, t) per seed, float64: RandomState(seed) draws z0, z1, then t (0 for ``end`` sampling)."""
    z0, z1, t = [], [], []
    for s in seeds:
        rng = np.random.RandomState(int(s))
        z0.append(rng.randn(z_dim))
        z1.append(rng.randn(z_dim))
        t.append(rng.rand() if sampling == "full" else 0.0)
    return np.stack(z0), np.stack(z1), np.asarray(t)


def path_lengths(G, embed, z0, z1, t, spec: PPLSpec, c=None) -> torch.Tensor:
    """The per-sample distances [N] for latents ``z0``, ``z1`` [N, z_dim] and ``t`` [N] (in their dtype).

    ``G`` has ``mapping(z)`` -> ws, ``synthesis(ws)`` and ``to_minus_one_one``; ``embed(pixels)`` is the LPIPS
    embedding of [0, 255] images (``VGG16.lpips_features``). ``c``: a conditional G's one-hot labels [N,
    c_dim], one per sample, the same at both ends of its path (as stylegan3)."""
    eps = spec.epsilon
    t = t.view(-1, 1)
    label = {} if c is None else {"c": torch.cat([c, c]).to(z0.dtype)}
    if spec.space == "w":
        w0, w1 = G.mapping(torch.cat([z0, z1]), **label).chunk(2)
        tw = t.view(-1, *[1] * (w0.ndim - 1))
        ws = torch.cat([w0.lerp(w1, tw), w0.lerp(w1, tw + eps)])
    else:
        ws = G.mapping(torch.cat([slerp(z0, z1, t), slerp(z0, z1, t + eps)]), **label)
    images = G.to_minus_one_one(G.synthesis(ws))
    if spec.crop:
        images = face_crop(images)
    images = box_downsample(images, G.resolution)
    e0, e1 = embed((images + 1) * (255 / 2)).chunk(2)
    return (e0 - e1).square().flatten(1).sum(1) / eps**2


# ----------------------------------------------------------------------------------------------------------


def _load_lpips(vgg16, device):
    from stylenat.metrics.vgg16 import VGG16WeightsError, load_vgg16

    net = vgg16 if hasattr(vgg16, "lpips_features") else load_vgg16(vgg16, device=device)
    if getattr(net, "source", "nvidia") != "nvidia":
        raise VGG16WeightsError(
            f"PPL needs LPIPS, i.e. NVIDIA's TorchScript vgg16.pt; {net.path} is a torchvision state dict"
        )
    return net


@full_fp32()
def compute_ppl(
    metric: str | PPLSpec,
    G,
    *,
    vgg16=None,
    num_gen: int | None = None,
    batch_size: int = 32,
    device=None,
    seed_start: int = 0,
    progress: bool = True,
    labels=None,
) -> dict:
    """``metric`` (a PPL name) of generator ``G``; ``vgg16`` is a loaded :class:`VGG16` (or anything with
    ``lpips_features``) or a path (None: env ``STYLENAT_VGG16``, then the cache). Under torch.distributed
    every rank computes a contiguous slice of the samples; the value is on every rank. ``labels``: a
    conditional G's ``seeds -> one-hot labels`` (``stylenat.sampling.seeded_labels_fn``)."""
    if getattr(G, "c_dim", 0) and labels is None:
        raise ValueError(
            f"PPL of a class-conditional generator (c_dim={G.c_dim}) needs labels: give class_idx=N "
            "or a labelled data set"
        )
    t0 = time.perf_counter()
    spec = metric if isinstance(metric, PPLSpec) else PPL_METRICS[metric]
    check_ppl_dtype(spec.name, getattr(G, "compute_dtype", torch.float32))
    num_gen = spec.num_gen if num_gen is None else int(num_gen)
    if num_gen < 2:
        raise ValueError(f"num_gen must be >= 2, got {num_gen}")
    device = torch.device(device) if device is not None else G.w_avg.device
    net = _load_lpips(vgg16, device)
    rank, world, _ = rank_world()
    per_rank = math.ceil(num_gen / world)
    seeds = np.arange(seed_start, seed_start + num_gen)[rank * per_rank : (rank + 1) * per_rank]
    dtype = G.w_avg.dtype  # fp32 for every real generator (float64 stand-ins in the tests)
    out = []
    with (
        torch.no_grad(),
        tqdm(total=len(seeds), desc=spec.name, unit="img", disable=not progress or rank) as bar,
    ):
        for chunk in np.array_split(seeds, max(1, math.ceil(len(seeds) / batch_size))):
            if len(chunk) == 0:
                continue
            z0, z1, t = (
                torch.from_numpy(a).to(device, dtype) for a in sample_latents(chunk, G.z_dim, spec.sampling)
            )
            c = None if labels is None else labels(chunk.tolist())
            out.append(path_lengths(G, net.lpips_features, z0, z1, t, spec, c).double().cpu().numpy())
            bar.update(len(chunk))
    distances = np.concatenate(all_gather_object(np.concatenate(out) if out else np.zeros(0)))
    value = trimmed_mean(distances)
    record = {
        "metric": spec.name,
        "kind": "ppl",
        "value": value,
        "num_gen": num_gen,
        "space": spec.space,
        "sampling": spec.sampling,
        "crop": spec.crop,
        "epsilon": spec.epsilon,
        "feature_network": "lpips_vgg16",
        "weights_sha256": getattr(net, "sha256", getattr(net, "weights_sha256", "")),
        "seed_start": seed_start,
        "world_size": world,
        "tf32": False,
        "time_s": round(time.perf_counter() - t0, 3),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "spec": asdict(spec),
    }
    if num_gen != spec.num_gen:
        record["label"] = f"{spec.name} on {num_gen} samples (published: {spec.num_gen}; not comparable)"
    logger.info("%s = %.4f (%d samples)", spec.name, value, num_gen)
    return record
