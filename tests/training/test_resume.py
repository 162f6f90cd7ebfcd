"""N steps + resume + M steps == N + M steps, bit for bit, in process (CPU)."""

import pytest
import torch

from stylenat.cli import compose_config
from stylenat.distributed import DistEnv
from stylenat.training.checkpoint import ResumeError, find_latest_state, load_state
from stylenat.training.run import Trainer, prepare_run
from tests.training.helpers import CONFIG_DIR, TINY, steps_kimg

CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
# Exercise every source of per-step randomness and schedule: R1 every 2 steps, style mixing, bCR,
# halflife EMA, lr decay inside the run, gradient accumulation (2 micro-batches of 2).
EXTRA = [
    "train.r1_every=2",
    "train.style_mixing=0.5",
    "train.ema_decay=null",
    "train.ema_halflife_kimg=0.01",
    "train.lr_decay_start_kimg=0.008",
    "train.lr_decay_end_kimg=0.028",
    "train.batch_per_gpu=2",
]


def _train(run_dir, steps, *extra):
    cfg = compose_config(
        CONFIG_DIR, [*TINY, *EXTRA, f"run_dir={run_dir}", f"train.total_kimg={steps_kimg(steps)}", *extra]
    )
    trainer = Trainer(prepare_run(cfg, CPU))
    trainer.fit()
    return trainer


def _max_diff(a, b, path="") -> float:
    if isinstance(a, torch.Tensor):
        assert a.shape == b.shape, path
        return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        return max([_max_diff(a[k], b[k], f"{path}.{k}") for k in a] or [0.0])
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        return max([_max_diff(x, y, f"{path}[{i}]") for i, (x, y) in enumerate(zip(a, b))] or [0.0])
    assert a == b, f"{path}: {a!r} != {b!r}"
    return 0.0


@pytest.mark.slow
def test_resume_equals_uninterrupted(tmp_path):
    full = _train(tmp_path / "full", 5)
    _train(tmp_path / "split", 3)
    resumed = _train(tmp_path / "split", 5)  # auto-resume: run_dir already holds a state
    assert resumed.counters.step == full.counters.step == 5
    assert resumed.counters.images_seen == full.counters.images_seen == 20
    diffs = {
        name: _max_diff(getattr(full.gan, name).state_dict(), getattr(resumed.gan, name).state_dict())
        for name in ("G", "D", "G_ema", "opt_G", "opt_D")
    }
    assert all(d == 0.0 for d in diffs.values()), diffs
    # and the states on disk say the same
    a, b = load_state(find_latest_state(tmp_path / "full")), load_state(find_latest_state(tmp_path / "split"))
    assert _max_diff({k: a[k] for k in ("G", "D", "G_ema")}, {k: b[k] for k in ("G", "D", "G_ema")}) == 0.0
    assert a["counters"] == b["counters"] == {"step": 5, "images_seen": 20, "skipped_images": 0}
    assert a["lr"] == b["lr"] and a["sampler"] == {"position": 20}


# ADA with p moving every 2 steps (the split at step 3 falls inside an interval, so the running sum of
# sign(D(real)) must be saved too), a start p high enough that every op fires, and a target that p moves from.
ADA = [
    "train.augment=ada",
    "train.augment_p=0.5",
    "train.ada_interval=2",
    "train.ada_kimg=0.02",
    "train.ada_target=1.0",
]


@pytest.mark.slow
def test_resume_with_ada_equals_uninterrupted(tmp_path):
    full = _train(tmp_path / "full", 5, *ADA)
    _train(tmp_path / "split", 3, *ADA)
    resumed = _train(tmp_path / "split", 5, *ADA)
    assert full.gan.augment.p < 0.5  # p moved during the run (down: r_t never exceeds the target 1)
    assert resumed.gan.augment.p == full.gan.augment.p
    assert resumed.gan.ada_sums.tolist() == full.gan.ada_sums.tolist()
    for name in ("G", "D", "G_ema", "opt_G", "opt_D"):
        assert (
            _max_diff(getattr(full.gan, name).state_dict(), getattr(resumed.gan, name).state_dict()) == 0.0
        ), name
    a, b = load_state(find_latest_state(tmp_path / "full")), load_state(find_latest_state(tmp_path / "split"))
    assert a["augment"] == b["augment"] and a["augment"]["p"] == full.gan.augment.p


@pytest.mark.slow
def test_resume_refuses_another_model_and_writes_nothing(tmp_path):
    _train(tmp_path / "run", 1)
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").iterdir()}
    cfg = compose_config(
        CONFIG_DIR,
        [*TINY, *EXTRA, f"run_dir={tmp_path / 'run'}", "train.total_kimg=1", "model.channels=[32,32,16]"],
    )
    with pytest.raises(
        ResumeError, match=r"model.channels differs \(checkpoint \[32, 32, 32\], config \[32, 32, 16\]\)"
    ):
        prepare_run(cfg, CPU)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").iterdir()} == before


@pytest.mark.slow
def test_metric_hook_logs_each_metric(tmp_path, monkeypatch):
    import json

    from stylenat import metrics

    calls = []

    def fake_compute_metric(name, generator_fn, **kw):
        images = generator_fn(torch.arange(3))
        calls.append((name, tuple(images.shape), kw["rank"], kw["world_size"]))
        return {"value": 12.5, "protocol": "stylegan", "time_s": 0.0}

    monkeypatch.setattr(metrics, "load_inception", lambda device: object())
    monkeypatch.setattr(metrics, "compute_metric", fake_compute_metric)
    _train(tmp_path / "run", 3, "train.metrics=[fid1k]", "train.metric_every_kimg=0.008")
    assert calls == [("fid1k", (3, 3, 16, 16), 0, 1)] * 2  # at 0.008 kimg and at the end
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["kimg"] for r in records if r.get("metric") == "fid1k"] == [0.008, 0.012]
    assert all(r["fid1k"] == 12.5 for r in records if "metric" in r)
