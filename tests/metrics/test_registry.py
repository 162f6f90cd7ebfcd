"""Metric registry and compute_metric (with a cheap fake extractor; the real network is tested elsewhere)."""

import json
import math
import os
import re
import socket

import numpy as np
import pytest
import torch

from stylenat.metrics import (
    METRICS,
    StatisticsMismatchError,
    append_jsonl,
    compute_metric,
    compute_statistics,
    get_metric,
)
from stylenat.metrics.registry import METRIC_KINDS, MetricKind, MetricSpec
from tests.metrics.helpers import FakeExtractor, seeded_generator


def _real_batches(n=48, shift=0.0, seed=100):
    gen = seeded_generator(shift)
    for start in range(0, n, 16):
        yield (
            (gen(torch.arange(seed + start, seed + start + 16)) * 127.5 + 128).clamp(0, 255).to(torch.uint8)
        )


def test_every_named_metric_has_a_registered_kind_and_is_found_by_name():
    """Behaviour, not a copy of the table: each name resolves to its spec, says what it computes (its kind,
    then the number of generated images: 50k, 1k, 500), and its kind has a function."""
    assert {"fid50k_full", "fid50k", "kid50k_full", "pr50k3_full"} <= set(METRICS)
    for name, spec in METRICS.items():
        kind, count = re.match(r"([a-z]+?)(\d+k?)", name).groups()
        assert get_metric(name) is spec and spec.name == name and spec.kind == kind, name
        assert spec.num_gen == (int(count[:-1]) * 1000 if count.endswith("k") else int(count)), name
        assert spec.kind in METRIC_KINDS
        assert METRIC_KINDS[spec.kind].features == (spec.kind in ("kid", "pr"))
    full, paper = get_metric("fid50k_full"), get_metric("fid50k")
    assert (full.kind, full.num_gen, full.protocol, full.max_real) == ("fid", 50000, "stylegan", None)
    assert (paper.protocol, paper.max_real, paper.real_subset) == ("pytorch_fid", 50000, "random")
    kid = get_metric("kid50k_full")
    assert (kid.kind, kid.num_subsets, kid.max_subset_size) == ("kid", 100, 1000)
    assert get_metric("fid1k").num_gen == 1000 and get_metric("fid10k").protocol == "stylegan"
    assert (get_metric("fid500").num_gen, get_metric("fid500").protocol) == (500, "stylegan")
    with pytest.raises(ValueError) as err:
        get_metric("fid_50k")
    msg = str(err.value)
    assert "unknown metric 'fid_50k'" in msg and all(name in msg for name in METRICS) and "\n" not in msg


def test_compute_metric_fid_is_deterministic_and_recorded(tmp_path):
    ext = FakeExtractor()
    ref = compute_statistics(_real_batches(), "stylegan", ext, progress=False)
    kw = dict(extractor=ext, ref_stats=ref, num_gen=40, batch_size=16, progress=False)
    a = compute_metric("fid10k", seeded_generator(), **kw)
    b = compute_metric("fid10k", seeded_generator(), **kw)
    far = compute_metric("fid10k", seeded_generator(shift=1.0), **kw)
    assert a["value"] == b["value"] and 0 <= a["value"] < far["value"]
    for key in ("metric", "value", "protocol", "num_gen", "num_real", "weights_sha256", "time_s"):
        assert key in a
    assert (a["metric"], a["protocol"], a["num_gen"], a["num_real"]) == ("fid10k", "stylegan", 40, 48)
    assert a["weights_sha256"] == "fake-weights"
    out = tmp_path / "results" / "metrics.jsonl"
    append_jsonl(out, a)
    append_jsonl(out, {**far, "value": float("nan")})
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0]["value"] == a["value"] and lines[1]["value"] is None


def test_compute_metric_kid_from_real_batches():
    r = compute_metric(
        "kid50k_full",
        seeded_generator(),
        extractor=FakeExtractor(),
        real_data=_real_batches(),
        num_gen=32,
        batch_size=16,
        progress=False,
    )
    assert r["kind"] == "kid" and r["num_real"] == 48 and math.isfinite(r["value"])


def test_compute_metric_refuses_other_protocol_and_short_real_data(tmp_path):
    ext = FakeExtractor()
    ref = compute_statistics(_real_batches(), "stylegan", ext, progress=False)
    with pytest.raises(StatisticsMismatchError, match="protocol 'stylegan' but 'pytorch_fid' was requested"):
        compute_metric("fid50k", seeded_generator(), extractor=ext, ref_stats=ref, num_gen=8, progress=False)
    with pytest.raises(ValueError, match="fid50k needs 50000 real images, the real data gave only 48"):
        compute_metric(
            "fid50k", seeded_generator(), extractor=ext, real_data=_real_batches(), num_gen=8, progress=False
        )
    with pytest.raises(ValueError, match="returned \\(2, 3, 8, 8\\) for 4 seeds"):
        compute_metric(
            "fid1k",
            lambda s: torch.zeros(2, 3, 8, 8),
            extractor=ext,
            ref_stats=ref,
            num_gen=4,
            progress=False,
        )
    subset = compute_statistics(_real_batches(16), "stylegan", ext, subset="first", progress=False)
    with pytest.raises(
        ValueError, match="fid1k needs statistics of all real images, .* 'first' subset of 16"
    ):
        compute_metric(
            "fid1k", seeded_generator(), extractor=ext, ref_stats=subset, num_gen=4, progress=False
        )
    with pytest.raises(ValueError, match="exactly one of ref_stats or real_data"):
        compute_metric("fid1k", seeded_generator(), extractor=ext, num_gen=4, progress=False)
    with pytest.raises(ValueError, match="needs an initialised torch.distributed"):
        compute_metric(
            "fid1k", seeded_generator(), extractor=ext, ref_stats=ref, num_gen=4, world_size=2, progress=False
        )


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, ref, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        r = compute_metric(
            "kid50k_full",
            seeded_generator(),
            extractor=FakeExtractor(),
            ref_stats=ref,
            num_gen=37,
            batch_size=8,
            progress=False,
        )
        queue.put((rank, r["value"], r["num_gen"], r["world_size"]))
    finally:
        torch.distributed.destroy_process_group()


def test_compute_metric_sharded_over_two_ranks_matches_one_process():
    """Seeds are split across ranks and features all_gathered in seed order: same KID as one process."""
    ext = FakeExtractor()
    ref = compute_statistics(_real_batches(), "stylegan", ext, keep_features=True, progress=False)
    single = compute_metric(
        "kid50k_full",
        seeded_generator(),
        extractor=ext,
        ref_stats=ref,
        num_gen=37,
        batch_size=8,
        progress=False,
    )
    ctx = torch.multiprocessing.get_context("spawn")
    queue = ctx.SimpleQueue()
    torch.multiprocessing.start_processes(
        _worker, args=(2, _free_port(), ref, queue), nprocs=2, join=True, start_method="spawn"
    )
    results = sorted(queue.get() for _ in range(2))
    assert results[0][1] == pytest.approx(single["value"], rel=1e-9, abs=1e-12)
    assert np.isnan(results[1][1])  # only rank 0 reports the value
    assert results[0][2:] == (37, 2)


def test_compute_metric_with_an_image_folder_caches_real_statistics(tmp_path):
    from PIL import Image

    from stylenat.metrics.statistics import stats_cache_dir

    folder = tmp_path / "reals"
    folder.mkdir()
    for i, batch in enumerate(_real_batches(16)):
        for j, img in enumerate(batch):
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"{i}_{j:02d}.png")
    kw = dict(extractor=FakeExtractor(), real_data=folder, num_gen=8, batch_size=8, progress=False)
    first = compute_metric("fid1k", seeded_generator(), **kw)
    assert first["num_real"] == 16 and len(first["real_fingerprint"]) == 64 and first["real_subset"] == "all"
    assert len(list(stats_cache_dir().glob("*.npz"))) == 1
    assert compute_metric("fid1k", seeded_generator(), **kw)["value"] == first["value"]


def test_metrics_run_with_tf32_off_and_restore_it(restore_tf32):
    """NVIDIA's metrics turn TF32 off for matmuls and convolutions: the switches as the extractor sees them
    (real statistics and generated images alike), and as they are again afterwards."""
    from stylenat.ops.precision import set_tf32, tf32_flags

    seen = []

    class Recording(FakeExtractor):
        def forward(self, images, protocol="stylegan"):
            seen.append(tf32_flags())
            return super().forward(images, protocol)

    set_tf32(True)
    before = tf32_flags()
    ext = Recording()
    ref = compute_statistics(_real_batches(), "stylegan", ext, progress=False)
    record = compute_metric(
        "fid10k", seeded_generator(), extractor=ext, ref_stats=ref, num_gen=20, batch_size=10, progress=False
    )
    off = {"float32_matmul_precision": "highest", "cuda_matmul_allow_tf32": False, "cudnn_allow_tf32": False}
    assert len(seen) == 3 + 2 and all(flags == off for flags in seen)
    assert tf32_flags() == before and before["cuda_matmul_allow_tf32"] is True
    assert record["tf32"] is False


def test_ppl_names_are_known_but_need_the_generator():
    assert get_metric("ppl2_wend").kind == "ppl"
    with pytest.raises(ValueError, match="ppl_wend needs the generator itself"):
        compute_metric("ppl_wend", seeded_generator(), num_gen=4, progress=False)


def test_a_registered_kind_runs_on_the_shared_loop(monkeypatch):
    """A new metric is one small function: it sees both sides' features, in seed order when it asks."""
    seen = {}

    def mean_gap(m):
        seen["gen"] = m.gen_features
        return {"value": float(abs(m.gen_features.mean() - m.real.features.mean()))}

    monkeypatch.setitem(METRIC_KINDS, "gap", MetricKind(mean_gap, features=True))
    spec = MetricSpec("gap_test", "gap", 40, "stylegan")
    ext = FakeExtractor()
    r = compute_metric(
        spec, seeded_generator(), extractor=ext, real_data=_real_batches(), batch_size=16, progress=False
    )
    assert r["kind"] == "gap" and r["num_gen"] == 40 and r["value"] >= 0 and seen["gen"].shape[0] == 40
    first = seen["gen"]
    one = compute_metric(
        spec, seeded_generator(), extractor=ext, real_data=_real_batches(), batch_size=40, progress=False
    )
    assert np.array_equal(first, seen["gen"]) and one["value"] == r["value"]
