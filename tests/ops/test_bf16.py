"""bf16 in the ops (issue 16): the NA op and the fused CPU kernels in bf16 against fp32, the weight-cast
cache, and the dtype carried into evaluate's jsonl records and the benchmark's JSON lines."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from stylenat.models import fused
from stylenat.models.build import build_generator
from stylenat.ops import buffers, precision
from stylenat.ops.na import na2d
from tests.tiny import TINY_G16

ROOT = Path(__file__).resolve().parents[2]
needs_bf16 = pytest.mark.skipif(not precision.cpu_bf16_supported(), reason="no native bf16 on this CPU")
TINY = TINY_G16


def relative_error(a, b):
    return float((a.detach().float() - b.detach().float()).norm() / b.detach().float().norm())


@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("with_rpb", [True, False])
def test_na2d_bf16_forward_and_backward_match_fp32(dilation, with_rpb):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 12, 12, 16, generator=gen) for _ in range(3))
    rpb = 0.1 * torch.randn(4, 9, 9, generator=gen) if with_rpb else None
    grad = torch.randn(2, 4, 12, 12, 16, generator=gen)

    def run(dtype, backward):
        leaves = [t.to(dtype, copy=True).requires_grad_(backward) for t in (q, k, v)]
        bias = None if rpb is None else rpb.to(dtype, copy=True).requires_grad_(backward)
        out = na2d(*leaves, 5, dilation, rpb=bias, backend="torch")
        if not backward:
            return out, []
        out.backward(grad.to(dtype))
        return out, [t.grad for t in leaves] + ([bias.grad] if bias is not None else [])

    for backward in (False, True):
        out32, grads32 = run(torch.float32, backward)
        out16, grads16 = run(torch.bfloat16, backward)
        assert out16.dtype == torch.bfloat16
        assert relative_error(out16, out32) <= 1e-2
        for g16, g32 in zip(grads16, grads32):
            assert g16.dtype == torch.bfloat16 and relative_error(g16, g32) <= 3e-2


def test_cast_weight_is_cached_and_follows_changes():
    layer = torch.nn.Linear(8, 8)
    first = buffers.cast_weight(layer.weight, torch.bfloat16)
    assert first.dtype == torch.bfloat16 and buffers.cast_weight(layer.weight, torch.bfloat16) is first
    assert buffers.cast_weight(layer.weight, torch.float32) is layer.weight  # no cast: the parameter
    layer.load_state_dict({"weight": torch.ones(8, 8), "bias": torch.zeros(8)})
    assert torch.equal(buffers.cast_weight(layer.weight, torch.bfloat16), torch.ones(8, 8).bfloat16())
    layer.weight.data = torch.full((8, 8), 2.0)  # new storage, version counter of a fresh tensor
    assert torch.equal(buffers.cast_weight(layer.weight, torch.bfloat16), torch.full((8, 8), 2.0).bfloat16())
    opt = torch.optim.SGD(layer.parameters(), lr=1.0)
    layer(torch.ones(1, 8)).sum().backward()
    opt.step()
    torch.testing.assert_close(
        buffers.cast_weight(layer.weight, torch.bfloat16).float(), layer.weight.detach()
    )


@needs_bf16
def test_fused_stage_in_bf16_matches_fp32_and_keeps_fp32_maps():
    torch.manual_seed(0)
    G = build_generator(TINY).eval().requires_grad_(False)
    stage = G.stages[1]
    x = torch.randn(2, 8, 8, 32)
    w = torch.randn(2, 16)
    with torch.no_grad():
        reference = fused.stage(stage, x.clone(), w, w)
        out = fused.stage(stage, x.clone(), w, w, dtype=torch.bfloat16)
    assert out.dtype == torch.float32 and relative_error(out, reference) <= 1e-2
    assert relative_error(out, reference) > 0


@pytest.fixture
def snapshot(tmp_path):
    from stylenat.snapshot import save_snapshot

    torch.manual_seed(0)
    path = tmp_path / "network-snapshot-000000.pt"
    save_snapshot(path, build_generator(TINY))
    return path


@needs_bf16
def test_evaluate_records_the_dtype_in_every_jsonl_record(snapshot, tmp_path, monkeypatch):
    """run_evaluate with a stand-in metric (no Inception here): the record it appends names the dtype,
    and the images the metric receives come from the bf16 generator, as float32."""
    import stylenat.metrics as metrics
    from stylenat.evaluation import run_evaluate

    seen = {}

    def fake_compute_metric(spec, generator_fn, **kwargs):
        images = generator_fn(torch.arange(2))
        seen["dtype"] = images.dtype
        return {
            "metric": spec.name,
            "value": float(images.mean()),
            "protocol": "x",
            "num_gen": 2,
            "num_real": 0,
        }

    monkeypatch.setattr(metrics, "compute_metric", fake_compute_metric)
    monkeypatch.setattr(metrics, "load_inception", lambda *a, **k: None)
    base = OmegaConf.load(ROOT / "configs" / "evaluate.yaml")
    base.pop("defaults")
    results = tmp_path / "metrics.jsonl"
    for dtype in ("fp32", "bf16"):
        cfg = OmegaConf.merge(
            base,
            {
                "checkpoint": str(snapshot),
                "metrics": ["fid1k"],
                "ref_stats": str(tmp_path / "unused.npz"),
                "results": str(results),
                "device": "cpu",
                "dtype": dtype,
            },
        )
        run_evaluate(cfg)
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(r["dtype"], r["compute_dtype"]) for r in records] == [("fp32", "fp32"), ("bf16", "bf16")]
    assert seen["dtype"] == torch.float32


@needs_bf16
def test_benchmark_generator_json_carries_the_dtypes_side_by_side(capsys):
    spec = importlib.util.spec_from_file_location(
        "stylenat_benchmark_bf16", ROOT / "scripts" / "benchmark.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = ["generator", "--model", "tiny", "--batch", "1", "--reps", "2", "--warmup", "0", "--threads", "1"]
    bench.main([*argv, "--dtype", "fp32", "bf16"])
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert [(r["dtype"], r["compute_dtype"]) for r in records] == [("fp32", "fp32"), ("bf16", "bf16")]
    fp32, bf16 = records
    assert fp32["rel_l2_vs_fp32"] == 0.0 and 0 < bf16["rel_l2_vs_fp32"] <= 2e-2
    assert fp32["speedup_vs_fp32"] == 1.0 and bf16["speedup_vs_fp32"] > 0
    assert bf16["imgs_per_s"] == pytest.approx(1e3 / bf16["median_ms"], rel=1e-3)
    with pytest.raises(SystemExit):
        bench.main([*argv, "--dtype", "fp8"])


@needs_bf16
def test_benchmark_na_measures_the_dtypes_side_by_side():
    import subprocess
    import sys

    argv = ["na", "--res", "16", "--batch", "1", "--heads", "2", "--dim", "8", "--reps", "1", "--no-oracle"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "benchmark.py"), *argv, "--dtype", "float32", "bfloat16"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    *passes, summary = rows
    assert [(r["dtype"], r["pass"]) for r in passes] == [
        ("float32", "fwd"),
        ("float32", "fwd+bwd"),
        ("bfloat16", "fwd"),
        ("bfloat16", "fwd+bwd"),
    ]
    assert all("error" not in r and r["median_ms"] > 0 for r in passes)
    assert summary["dtype"] == "bfloat16" and summary["speedup_vs"] == "float32" and summary["res"] == 16
    assert summary["speedup_fwd"] > 0 and summary["speedup_fwd+bwd"] > 0
