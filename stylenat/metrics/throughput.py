"""Inception feature-extraction throughput (images per second) on the current machine."""

from __future__ import annotations

import time

import torch

from stylenat.metrics.statistics import extract_features


def measure_inception_throughput(
    extractor,
    protocol: str = "stylegan",
    batch_size: int = 32,
    resolution: int = 256,
    iters: int = 3,
    warmup: int = 1,
    device=None,
    seed: int = 0,
) -> dict:
    """Time ``iters`` batches of random uint8 images (after ``warmup`` untimed ones) through the whole
    protocol (resize to 299 included). Returns images/s and the settings, for logs and reports."""
    if iters < 1 or batch_size < 1:
        raise ValueError(f"iters and batch_size must be >= 1, got {iters} and {batch_size}")
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch_size, 3, resolution, resolution), dtype=torch.uint8, generator=gen)
    for _ in range(warmup):
        extract_features(extractor, images, protocol, device)
    dev = torch.device(device) if device is not None else None
    sync = torch.cuda.synchronize if dev is not None and dev.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        extract_features(extractor, images, protocol, device)
    sync()
    dt = time.perf_counter() - t0
    return {
        "protocol": protocol,
        "batch_size": batch_size,
        "resolution": resolution,
        "iters": iters,
        "seconds": round(dt, 3),
        "images_per_s": batch_size * iters / dt,
        "torch_threads": torch.get_num_threads(),
        "device": str(dev or "cpu"),
    }
