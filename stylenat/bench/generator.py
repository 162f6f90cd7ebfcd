"""Generator throughput on the current machine (images/s, FLOPs, memory, its cost against the output
resolution). ``evaluate.py mode=throughput`` and ``scripts/benchmark.py`` report these; the timers and
counters are :mod:`stylenat.perf`'s."""

from __future__ import annotations

import statistics
import time

import torch

from stylenat import perf
from stylenat.ops.precision import dtype_name, inference_dtype, set_tf32

# The CPU's matrix-product rate the generator figures are compared with (this machine's measured sgemm rate).
CPU_SGEMM_GFLOPS = 220.0


def generator_flops(G, batch: int = 1) -> float:
    """FLOPs of one G(z) call (mapping + synthesis) as counted by torch's FlopCounterMode (matmuls, attention),
    the CPU's fused attention kernel included (torch's counter has no formula for it).

    Neighborhood attention is counted as the torch backend computes it (query tiles against their key
    halos: the same count on every device), whichever backend the model would pick: under the counter
    the compiled flex kernel cannot run (its frame is skipped and the flex op has no implementation for
    the counter's mode), and flex's or NATTEN's own counts would not match the torch backend's anyway."""
    from stylenat.ops.na import backend_override

    device = next(G.parameters()).device
    z = torch.randn(batch, G.z_dim, device=device)
    trainable = [p for p in G.parameters() if p.requires_grad]
    try:  # the counter's module tracker cannot hook parameters that require grad under no_grad
        G.requires_grad_(False)
        with backend_override("torch"), torch.no_grad():
            return perf.count_flops(lambda: G(z))
    finally:
        for p in trainable:
            p.requires_grad_(True)


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
    CUDA events on a GPU, perf_counter on the CPU. ``dtype`` (fp32 | bf16 | fp16, or torch's names): G's
    compute dtype for the measurement (``Generator.set_compute_dtype``; restored after). Returns the
    figures and every setting that affects them."""
    if batch < 1 or reps < 1 or warmup < 0:
        raise ValueError(f"need batch >= 1, reps >= 1, warmup >= 0; got {batch}, {reps}, {warmup}")
    device = next(G.parameters()).device
    compute_dtype = inference_dtype(dtype, device)  # one-line errors; bf16 falls back where unsupported
    if device.type == "cuda":
        set_tf32(tf32)
    perf.reset_peak_memory(device)
    previous_dtype = G.compute_dtype
    G.set_compute_dtype(compute_dtype)
    run = torch.compile(G) if compile else G
    z = torch.randn(batch, G.z_dim, device=device, generator=torch.Generator(device).manual_seed(seed))
    times_ms = []
    t_compile = time.perf_counter()
    try:
        with torch.inference_mode():
            for i in range(warmup + reps):
                elapsed = perf.call_ms(lambda: run(z), device)
                if i == 0:
                    first_call_s = time.perf_counter() - t_compile
                if i >= warmup:
                    times_ms.append(elapsed)
    finally:
        G.set_compute_dtype(previous_dtype)
    times = torch.tensor(times_ms)
    return {
        "mode": "generator",
        "resolution": G.resolution,
        "batch": batch,
        "reps": reps,
        "warmup": warmup,
        "dtype": dtype_name(dtype),
        "compute_dtype": dtype_name(compute_dtype),
        "tf32": tf32 if device.type == "cuda" else None,
        "compile": compile,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "median_ms": float(times.median()),
        "mean_ms": float(times.mean()),
        "imgs_per_s": batch * len(times_ms) / (float(times.sum()) / 1e3),
        "first_call_s": round(first_call_s, 3),
        "peak_mem_mb": round(perf.peak_memory_mb(device), 1),
        "peak_mem_kind": perf.peak_memory_kind(device),
    }


def relative_error(G, dtype, batch: int = 1, seed: int = 0, truncation_psi: float = 1.0) -> float:
    """||G(z) in dtype - G(z) in fp32|| / ||G(z) in fp32|| over the images of ``batch`` seeded latents:
    what a reduced compute dtype costs in accuracy (G's own dtype is restored after)."""
    device = next(G.parameters()).device
    z = torch.randn(batch, G.z_dim, generator=torch.Generator().manual_seed(seed)).to(device)
    previous, images = G.compute_dtype, {}
    try:
        for name in ("fp32", dtype):
            G.set_compute_dtype(inference_dtype(name, device))
            with torch.inference_mode():
                images[name] = G(z, truncation_psi=truncation_psi).float()
    finally:
        G.set_compute_dtype(previous)
    reference = images["fp32"]
    return float((images[dtype] - reference).norm() / reference.norm())


def dtype_comparison(G, dtypes, batch: int, warmup: int, reps: int, seed: int = 0) -> list[dict]:
    """images/s of G(z) for each of ``dtypes`` in one process, measured round-robin call by call (the load
    of a shared machine falls on all alike), each with its speed-up over fp32 and its relative L2 error
    against fp32 on the same latents (when fp32 is among them)."""
    names = [dtype_name(d) for d in dtypes]
    times = {name: [] for name in names}
    records = {}
    for rep in range(reps):
        for name in names:
            record = measure_generator_throughput(
                G, batch=batch, warmup=warmup if rep == 0 else 0, reps=1, dtype=name, seed=seed
            )
            times[name].append(record["median_ms"])
            records.setdefault(name, record)
    out = []
    for name in names:
        median_ms = statistics.median(times[name])
        record = {
            **records[name],
            "reps": reps,
            "median_ms": round(median_ms, 2),
            "min_ms": round(min(times[name]), 2),
            "imgs_per_s": round(batch * 1e3 / median_ms, 4),
        }
        record.pop("mean_ms", None)
        if "fp32" in times:
            record["speedup_vs_fp32"] = round(statistics.median(times["fp32"]) / median_ms, 3)
            # the fastest calls: the least disturbed by other work on a shared machine
            record["speedup_vs_fp32_min"] = round(min(times["fp32"]) / min(times[name]), 3)
            record["rel_l2_vs_fp32"] = 0.0 if name == "fp32" else relative_error(G, name, batch, seed)
        out.append(record)
    return out


def cpu_bound_figures(G, batch: int, imgs_per_s: float, gflop: float) -> dict:
    """A CPU generator figure against the FLOP bound: the fixed sgemm rate and the one measured now, and
    the time inside matrix products (what the bound covers) against the rest."""
    bound = CPU_SGEMM_GFLOPS / gflop
    sgemm = perf.measured_sgemm_gflops()
    z = torch.randn(batch, G.z_dim)
    with torch.no_grad():
        gemm, share = perf.gemm_split(lambda: G(z), reps=1)
    return {
        "flop_bound_imgs_per_s": round(bound, 3),
        "fraction_of_bound": round(imgs_per_s / bound, 3),
        "sgemm_gflops_now": round(sgemm, 1),
        "flop_bound_now_imgs_per_s": round(sgemm / gflop, 3),
        "fraction_of_bound_now": round(imgs_per_s * gflop / sgemm, 3),
        "gemm_s_per_batch": round(gemm / 1e3, 3),
        "gemm_share": round(share, 3),
        "imgs_per_s_if_only_gemm": round(batch * 1e3 / gemm, 4),
    }


def compiled_figures(G, settings: dict, eager: dict) -> dict:
    """torch.compile(G)'s first call and steady state next to the eager record; a failure is reported
    (compile_error) rather than raised."""
    # Two untimed calls at least: dynamo may recompile on the second call (guards on the first call's state).
    warmup = max(2, settings["warmup"])
    try:
        compiled = measure_generator_throughput(G, compile=True, **{**settings, "warmup": warmup})
    except Exception as err:  # noqa: BLE001 - inductor/C++ toolchain failures vary: report them
        return {"compile_error": perf.error_text(err, 1000)}
    finally:
        torch._dynamo.reset()
    batch = settings["batch"]
    return {
        "compile_first_call_s": compiled["first_call_s"],
        "compile_s": round(compiled["first_call_s"] - eager["median_ms"] / 1e3, 3),
        "compiled_warmup": warmup,
        "compiled_median_ms": compiled["median_ms"],
        "compiled_imgs_per_s": round(batch * 1e3 / compiled["median_ms"], 4),
        "compile_speedup": round(eager["median_ms"] / compiled["median_ms"], 3),  # steady state, medians
    }


def scaling_figures(G, batch: int, reps: int, warmup: int, isolated: bool) -> dict:
    """One resolution of the scaling benchmark: ms and peak memory per image over the built model, GFLOP
    per image, and the share of time inside na2d (one extra call with the layers' na2d timed)."""
    from stylenat.models import attention

    device = next(G.parameters()).device
    z = torch.randn(batch, G.z_dim, device=device)

    def call():
        with torch.inference_mode():
            G(z)

    # Peak memory of the calls over the built model (first call's plans and caches included).
    perf.sync(device)
    if device.type == "cuda":
        base = torch.cuda.memory_allocated(device) / 2**20
        mem_kind = "cuda_max_allocated_minus_model"
    else:
        base = perf.max_rss_mb()
        mem_kind = "cpu_max_rss_increase_over_model_in_fresh_process" if isolated else "cpu_max_rss_increase"
    perf.reset_peak_memory(device)
    times = perf.time_call(call, device, reps, warmup=max(1, warmup))
    peak = perf.peak_memory_mb(device) - base
    gflop = generator_flops(G, batch=1) / 1e9

    na_time, original = [0.0], attention.na2d

    def timed_na2d(*a, **kw):
        perf.sync(device)
        start = time.perf_counter()
        out = original(*a, **kw)
        perf.sync(device)
        na_time[0] += time.perf_counter() - start
        return out

    attention.na2d = timed_na2d
    try:
        total = perf.time_call(call, device, reps=1, warmup=0)[0] / 1e3
    finally:
        attention.na2d = original
    med = statistics.median(times)
    return {
        "resolution": G.resolution,
        "batch": batch,
        "reps": reps,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "g_params_m": round(sum(p.numel() for p in G.parameters()) / 1e6, 3),
        "ms_per_img": round(med / batch, 2),
        "imgs_per_s": round(batch * 1e3 / med, 4),
        "median_ms_per_batch": round(med, 2),
        "peak_mem_mb": round(peak, 1),
        "peak_mem_mb_per_img": round(peak / batch, 1),
        "peak_mem_kind": mem_kind,
        "gflop_per_img": round(gflop, 2),
        "na2d_share": round(na_time[0] / total, 3),
    }


def config_at_resolution(cfg: dict, resolution: int) -> tuple[dict, str]:
    """A generator config dict with its output resolution changed and every stage setting kept: channels
    from the config (its table, or its explicit list extended with its last entry), kernels extended with
    their last entry, dilations of new stages [1, size / 8] (the paper's Hydra split). Returns the config
    and a note on its channels."""
    from stylenat.models.generator import GeneratorConfig

    cfg = dict(cfg)
    n_stages = resolution.bit_length() - 2  # 4x4 .. resolution
    paper = GeneratorConfig()
    if cfg.get("channels") is not None:
        channels = list(cfg["channels"])
        cfg["channels"] = (channels + [channels[-1]] * n_stages)[:n_stages]
        note = f", channels {cfg['channels']}"
    else:
        note = f" (channels from its table, cm={cfg.get('channel_multiplier', 2)})"
    kernels, dilations = list(cfg["kernels"]), list(cfg["dilations"])
    kernels += [kernels[-1]] * (n_stages - len(kernels))
    for s in range(len(dilations), n_stages):
        size = 4 * 2**s
        dilations.append(paper.dilations[s] if s < len(paper.dilations) else [1, size // 8])
    cfg.update(resolution=resolution, kernels=kernels[:n_stages], dilations=dilations[:n_stages])
    return cfg, note


def scaling_growth(records: list[dict]) -> list[dict]:
    """Ratios between consecutive resolutions of the scaling records that did not fail."""
    ok = [r for r in records if "error" not in r]
    keys = ("ms_per_img", "peak_mem_mb", "gflop_per_img")
    return [
        {
            "from": a["resolution"],
            "to": b["resolution"],
            "pixels": round((b["resolution"] / a["resolution"]) ** 2, 2),
            **{key: round(b[key] / a[key], 3) if a[key] else None for key in keys},
        }
        for a, b in zip(ok, ok[1:])
    ]
