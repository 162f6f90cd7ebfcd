"""Inception feature-extraction throughput on the current machine: the network alone and the pipelines
around it (from PNG files, from generated-like tensors). ``scripts/benchmark.py inception`` reports these."""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stylenat import perf
from stylenat.data.reader import build_dataset, uint8_batches
from stylenat.metrics.protocols import get_protocol
from stylenat.metrics.statistics import compute_statistics, extract_features
from stylenat.ops.precision import full_fp32


@full_fp32()
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
    protocol (resize to 299 included), in full fp32 as the metrics run (TF32 off). Returns images/s and the
    settings, for logs and reports."""
    if iters < 1 or batch_size < 1:
        raise ValueError(f"iters and batch_size must be >= 1, got {iters} and {batch_size}")
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch_size, 3, resolution, resolution), dtype=torch.uint8, generator=gen)
    for _ in range(warmup):
        extract_features(extractor, images, protocol, device)
    dev = torch.device(device) if device is not None else None

    def timed_batches():
        for _ in range(iters):
            extract_features(extractor, images, protocol, device)

    dt = perf.time_call(timed_batches, dev or torch.device("cpu"), reps=1, warmup=0)[0] / 1e3
    return {
        "protocol": protocol,
        "batch_size": batch_size,
        "resolution": resolution,
        "iters": iters,
        "seconds": round(dt, 3),
        "images_per_s": batch_size * iters / dt,
        "torch_threads": torch.get_num_threads(),
        "device": str(dev or "cpu"),
        "tf32": False,
    }


def _write_pngs(folder: Path, n: int, resolution: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        pixels = rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:06d}.png")


@full_fp32()
def inception_pipeline_figures(
    model, protocol: str, n: int, res: int, batch: int, net_batch: int, reps: int, device
) -> list[dict]:
    """Inception img/s: the network alone (reference graph fp32 / channels_last, fused fast path), then the
    pipelines from PNG files (the data reader) and from generated-like tensors, each with its ratio to the
    network. Measured round-robin, rep by rep, so the load of a shared machine falls on all alike; in full
    fp32 (TF32 off), as the metrics run."""
    device = torch.device(device)
    proto = get_protocol(protocol)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(net_batch, 3, 299, 299, generator=gen).mul_(2).sub_(1).to(device)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    uint8 = torch.randint(0, 256, (n, 3, res, res), dtype=torch.uint8, generator=gen)
    floats = torch.rand(n, 3, res, res, generator=gen).mul_(2).sub_(1)

    def network(fn, inp):
        def call():
            with torch.inference_mode():
                fn(inp)

        return call

    def tensors(batches, generated: bool):
        def call():
            for b in batches:
                extract_features(model, proto.from_generator(b) if generated else b, proto.name, device)

        return call

    with tempfile.TemporaryDirectory(prefix="bench-inception-") as tmp:
        _write_pngs(Path(tmp), n, res)
        files = build_dataset(tmp, None, normalize=None)

        def from_files():
            compute_statistics(uint8_batches(files, batch), proto.name, model, device=device, progress=False)

        figures = {
            ("network", "fp32"): (network(model.features, x), net_batch),
            ("network", "channels_last"): (network(model.features, x_cl), net_batch),
            ("network", "fused"): (network(model.fast_features, x), net_batch),
            ("pipeline_files", "png"): (from_files, n),
            ("pipeline_tensors", "uint8"): (tensors(uint8.split(batch), False), n),
            ("pipeline_tensors", "float"): (tensors(floats.split(batch), True), n),
        }
        for fn, _ in figures.values():  # warm-up: first-call allocations, oneDNN weight reorders
            fn()
        seconds = {key: [] for key in figures}
        for _ in range(reps):
            for key, (fn, _) in figures.items():
                seconds[key].append(perf.time_call(fn, device, reps=1, warmup=0)[0] / 1e3)
    rate = {key: figures[key][1] / statistics.median(s) for key, s in seconds.items()}
    common = {
        "mode": "inception",
        "protocol": proto.name,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "reps": reps,
        "weights": model.weights_source,
    }
    records = []
    for (figure, variant), value in rate.items():
        record = {**common, "figure": figure, "variant": variant, "imgs_per_s": round(value, 3)}
        if figure == "network":
            record.update(batch=net_batch, input=f"[{net_batch}, 3, 299, 299] float32")
        else:
            record.update(
                n=n,
                resolution=res,
                batch=batch,
                ratio_to_network=round(value / rate["network", "fused"], 3),
                ratio_to_network_fp32=round(value / rate["network", "fp32"], 3),
            )
        records.append(record)
    return records
