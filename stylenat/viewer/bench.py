"""Server time per image of the viewer (``scripts/benchmark.py viewer``): the renderer's own path (seed ->
G -> uint8 -> PNG, under the render lock), each request a new seed so the cache never answers."""

from __future__ import annotations

import statistics

import torch

from stylenat.ops.precision import cpu_bf16_supported
from stylenat.viewer.render import ImageParams, Renderer


def default_dtypes(device) -> list[str]:
    """fp32, and bf16 where it runs natively (a CPU with AVX512-BF16 / AMX, or CUDA)."""
    native = cpu_bf16_supported() if torch.device(device).type == "cpu" else torch.cuda.is_bf16_supported()
    return ["fp32", "bf16"] if native else ["fp32"]


def image_latency(G, device="cpu", reps: int = 5, warmup: int = 1, psi: float = 0.7,
                  attention: bool = True) -> dict:
    """Median / min server ms per image (batch 1) over ``reps`` uncached requests after ``warmup`` ones;
    with ``attention`` also the ms of one attention click (every layer's weights at a pixel)."""
    renderer = Renderer(G, device, cache_items=0)
    times = []
    for i in range(warmup + reps):
        result = renderer.image_result(ImageParams(seed=1000 + i, psi=psi))
        if i >= warmup:
            times.append(result.render_ms)
    record = {
        "resolution": G.resolution,
        "compute_dtype": str(getattr(G, "compute_dtype", torch.float32)).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "reps": reps,
        "image_ms_median": round(statistics.median(times), 1),
        "image_ms_min": round(min(times), 1),
        "png_bytes": len(result.data),
    }
    if attention:
        R = G.resolution
        click = renderer.attention_result(ImageParams(seed=1000, psi=psi), R // 2, R // 3)
        record["attention_click_ms"] = round(click.render_ms, 1)
    return record
