"""Inception feature-extraction throughput (images per second) on the current machine."""

from __future__ import annotations

import time

import torch

from stylenat.metrics.statistics import extract_features
from stylenat.ops.precision import set_tf32


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


def _peak_memory_mb(device) -> tuple[float, str]:
    """Peak memory and what it measures: CUDA allocator peak, or the process's max RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_max_rss"


def _cpu_fused_attention_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def generator_flops(G, batch: int = 1) -> float:
    """FLOPs of one G(z) call (mapping + synthesis) as counted by torch's FlopCounterMode (matmuls, attention),
    the CPU's fused attention kernel included (torch's counter has no formula for it).

    Neighborhood attention is counted as the torch backend computes it (query tiles against their key
    halos: the same count on every device), whichever backend the model would pick: under the counter
    the compiled flex kernel cannot run (its frame is skipped and the flex op has no implementation for
    the counter's mode), and flex's or NATTEN's own counts would not match the torch backend's anyway."""
    from torch.utils.flop_counter import FlopCounterMode

    from stylenat.ops.na import backend_override

    device = next(G.parameters()).device
    z = torch.randn(batch, G.z_dim, device=device)
    fused_cpu = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_fused_attention_flops}
    trainable = [p for p in G.parameters() if p.requires_grad]
    try:  # the counter's module tracker cannot hook parameters that require grad under no_grad
        G.requires_grad_(False)
        counting = FlopCounterMode(display=False, custom_mapping=fused_cpu)
        with backend_override("torch"), torch.no_grad(), counting as counter:
            G(z)
    finally:
        for p in trainable:
            p.requires_grad_(True)
    return float(counter.get_total_flops())


def measure_generator_throughput(
    G,
    batch: int = 1,
    warmup: int = 10,
    reps: int = 500,
    dtype: str = "float32",
    tf32: bool = True,
    compile: bool = False,
    seed: int = 0,
) -> dict:
    """Images/s of G(z) (mapping + synthesis), the reference protocol: batch 1, 10 untimed + 500 timed calls,
    CUDA events on a GPU, perf_counter on the CPU. Returns the figures and every setting that affects them."""
    if batch < 1 or reps < 1 or warmup < 0:
        raise ValueError(f"need batch >= 1, reps >= 1, warmup >= 0; got {batch}, {reps}, {warmup}")
    dtypes = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in dtypes:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(dtypes)}")
    device = next(G.parameters()).device
    if device.type == "cuda":
        set_tf32(tf32)
        torch.cuda.reset_peak_memory_stats(device)
    run = torch.compile(G) if compile else G
    z = torch.randn(batch, G.z_dim, device=device, generator=torch.Generator(device).manual_seed(seed))
    autocast = torch.autocast(device.type, dtype=dtypes[dtype], enabled=dtypes[dtype] is not None)
    times_ms = []
    t_compile = time.perf_counter()
    with torch.inference_mode(), autocast:
        for i in range(warmup + reps):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                run(z)
                end.record()
                torch.cuda.synchronize(device)
                elapsed = start.elapsed_time(end)
            else:
                t0 = time.perf_counter()
                run(z)
                elapsed = (time.perf_counter() - t0) * 1e3
            if i == 0:
                first_call_s = time.perf_counter() - t_compile
            if i >= warmup:
                times_ms.append(elapsed)
    peak, peak_kind = _peak_memory_mb(device)
    times = torch.tensor(times_ms)
    return {
        "mode": "generator",
        "resolution": G.resolution,
        "batch": batch,
        "reps": reps,
        "warmup": warmup,
        "dtype": dtype,
        "tf32": tf32 if device.type == "cuda" else None,
        "compile": compile,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "median_ms": float(times.median()),
        "mean_ms": float(times.mean()),
        "imgs_per_s": batch * len(times_ms) / (float(times.sum()) / 1e3),
        "first_call_s": round(first_call_s, 3),
        "peak_mem_mb": round(peak, 1),
        "peak_mem_kind": peak_kind,
    }
