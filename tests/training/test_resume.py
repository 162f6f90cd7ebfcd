"""N steps + resume + M steps == N + M steps, bit for bit, in process (CPU)."""

import pytest
import torch

from stylenat.cli import compose_config
from stylenat.distributed import DistEnv
from stylenat.training.checkpoint import ResumeError, find_latest_state, load_state
from stylenat.training.run import prepare_run
from tests.training.helpers import CONFIG_DIR, TINY, max_diff
from tests.training.runs import RESUME_EXTRA as EXTRA
from tests.training.runs import resume_train as _train

CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@pytest.mark.slow
def test_resume_equals_uninterrupted(tmp_path):
    full = _train(tmp_path / "full", 5)
    _train(tmp_path / "split", 3)
    resumed = _train(tmp_path / "split", 5)  # auto-resume: run_dir already holds a state
    assert resumed.counters.step == full.counters.step == 5
    assert resumed.counters.images_seen == full.counters.images_seen == 20
    diffs = {
        name: max_diff(getattr(full.gan, name).state_dict(), getattr(resumed.gan, name).state_dict())
        for name in ("G", "D", "G_ema", "opt_G", "opt_D")
    }
    assert all(d == 0.0 for d in diffs.values()), diffs
    # and the states on disk say the same
    a, b = load_state(find_latest_state(tmp_path / "full")), load_state(find_latest_state(tmp_path / "split"))
    assert max_diff({k: a[k] for k in ("G", "D", "G_ema")}, {k: b[k] for k in ("G", "D", "G_ema")}) == 0.0
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
            max_diff(getattr(full.gan, name).state_dict(), getattr(resumed.gan, name).state_dict()) == 0.0
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


@pytest.mark.slow
def test_cpu_adam_runs_foreach_and_rounds_like_the_per_tensor_loop(tmp_path, monkeypatch):
    """The CPU optimizers take Adam's foreach form for speed; it must round exactly like the per-tensor
    loop (torch's CPU default, what earlier runs used), or old runs would stop reproducing."""
    foreach = _train(tmp_path / "foreach", 3)
    assert foreach.gan.opt_G.defaults["foreach"] is True and foreach.gan.opt_D.defaults["foreach"] is True

    adam = torch.optim.Adam
    monkeypatch.setattr(torch.optim, "Adam", lambda *args, foreach=None, **kw: adam(*args, foreach=False, **kw))
    loop = _train(tmp_path / "loop", 3)
    assert loop.gan.opt_G.defaults["foreach"] is False
    assert foreach.gan.opt_G.state  # the optimizers really stepped
    diffs = {
        name: max_diff(getattr(foreach.gan, name).state_dict(), getattr(loop.gan, name).state_dict())
        for name in ("G", "D", "G_ema")
    }
    for name in ("opt_G", "opt_D"):  # Adam's moments and steps (the param groups differ in the flag)
        diffs[name] = max_diff(
            getattr(foreach.gan, name).state_dict()["state"], getattr(loop.gan, name).state_dict()["state"]
        )
    assert all(d == 0.0 for d in diffs.values()), diffs
