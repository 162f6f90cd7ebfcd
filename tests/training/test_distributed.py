"""Two CPU processes under torchrun (gloo): ranks stay identical, and their state resumes in one process."""

import json

import pytest

from stylenat.training.checkpoint import find_latest_state, load_state
from tests.training.helpers import TINY, run_train, steps_kimg


@pytest.mark.slow
@pytest.mark.parametrize("reuse_fakes", ["false", "true"])
def test_two_processes_stay_in_sync_and_resume_single_process(tmp_path, reuse_fakes):
    run = tmp_path / "run"
    common = [
        *TINY,
        f"run_dir={run}",
        "train.sync_check=true",
        "train.r1_every=2",
        "train.style_mixing=0.5",
        f"train.reuse_fakes={reuse_fakes}",  # the paper's step, and the demo's
    ]
    proc = run_train([*common, f"train.total_kimg={steps_kimg(4)}"], torchrun=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert len(records) == 2  # one per log tick, written by rank 0 only
    for record in records:
        assert record["world_size"] == 2
        digests = record["param_digests"]
        assert len(digests) == 2 and digests[0] == digests[1]
    assert records[0]["param_digests"] != records[1]["param_digests"]  # the weights did move
    state = load_state(find_latest_state(run))
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert state["counters"] == {"step": 4, "images_seen": 16, "skipped_images": 0}

    proc = run_train([*common, f"train.total_kimg={steps_kimg(6)}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "global RNG states not restored" in proc.stderr
    last = json.loads((run / "log.jsonl").read_text().splitlines()[-1])
    assert (last["world_size"], last["step"], last["images_seen"]) == (1, 6, 24)


# ----------------------------------------------------------------------------------------------------
# all_reduce_grads: parameters without a gradient (issue 14), two gloo processes against one process
# ----------------------------------------------------------------------------------------------------


def _grad_scenario(rank: int = 0, world: int = 1, init_file: str | None = None, out: str | None = None):
    """Three Adam steps of a three-part model: "used" gets a gradient every step, "once" only in step 0
    (so Adam has momentum for it afterwards), "rank0" in step 1 on rank 0 only. Every rank sees the same
    data, so the averaged gradients equal one process's. Returns (final weights, which grads were None)."""
    import torch
    import torch.distributed as tdist

    from stylenat.distributed import all_reduce_grads

    if world > 1:
        tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({name: torch.nn.Linear(4, 1) for name in ("used", "once", "rank0")})
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    none_grads = []
    for step in range(3):
        x = torch.full((2, 4), float(step + 1))
        loss = model["used"](x).square().sum()
        if step == 0:
            loss = loss + model["once"](x).square().sum()
        if step == 1 and rank == 0:
            loss = loss + model["rank0"](x).square().sum()
        loss.backward()
        all_reduce_grads(model.parameters())
        none_grads.append(sorted(n for n, p in model.named_parameters() if p.grad is None))
        opt.step()
        opt.zero_grad(set_to_none=True)
    result = ({k: v.clone() for k, v in model.state_dict().items()}, none_grads)
    if world > 1:
        torch.save(result, out)
        tdist.destroy_process_group()
    return result


@pytest.mark.slow
def test_params_without_grad_stay_put_with_two_processes_as_with_one(tmp_path):
    import multiprocessing

    import torch

    ctx = multiprocessing.get_context("spawn")
    init, outs = tmp_path / "store", [tmp_path / f"rank{r}.pt" for r in range(2)]
    procs = [ctx.Process(target=_grad_scenario, args=(r, 2, str(init), str(outs[r]))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    (w0, none0), (w1, none1) = (torch.load(o) for o in outs)
    single, none_single = _grad_scenario()

    for key in w0:  # ranks agree exactly
        assert torch.equal(w0[key], w1[key]), key
    for part in ("used", "once"):  # the two-process run moved exactly what one process moved
        for name in ("weight", "bias"):
            key = f"{part}.{name}"
            torch.testing.assert_close(w0[key], single[key], rtol=1e-6, atol=1e-7, msg=key)
    # "once" had no gradient anywhere in steps 1 and 2: no grad tensor, so Adam left it alone (a zero
    # gradient would have moved it by its momentum); "rank0" got rank 0's gradient averaged with zeros
    assert none_single == none0 == none1
    once, rank0 = ["once.bias", "once.weight"], ["rank0.bias", "rank0.weight"]
    assert none0 == [rank0, once, once + rank0]


# ----------------------------------------------------------------------------------------------------
# Device selection under torchrun
# ----------------------------------------------------------------------------------------------------


def _fake_cuda_host(monkeypatch, count: int, env: dict):
    import torch

    from stylenat import distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    set_devices, groups = [], []
    monkeypatch.setattr(torch.cuda, "set_device", set_devices.append)
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kwargs: groups.append(kwargs))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return set_devices, groups


def test_rank_with_one_visible_device_uses_cuda0(monkeypatch):
    import torch

    from stylenat import distributed

    # torchrun rank 1 of 2 on a host whose scheduler gives each process one GPU through CUDA_VISIBLE_DEVICES
    set_devices, groups = _fake_cuda_host(
        monkeypatch, 1, {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "CUDA_VISIBLE_DEVICES": "1"}
    )
    env = distributed.init("cuda")
    assert env.device == torch.device("cuda", 0) and env.local_rank == 1
    assert set_devices == [torch.device("cuda", 0)]
    assert groups[0]["backend"] == "nccl" and groups[0]["device_id"] == torch.device("cuda", 0)


def test_rank_with_every_device_visible_uses_cuda_local_rank(monkeypatch):
    import torch

    from stylenat import distributed

    _fake_cuda_host(monkeypatch, 4, {"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "2"})
    assert distributed.init("auto").device == torch.device("cuda", 2)
    assert distributed.resolve_device("cuda", 3) == torch.device("cuda", 3)
    with pytest.raises(ValueError, match="LOCAL_RANK 2 but only 2 CUDA devices are visible"):
        _fake_cuda_host(monkeypatch, 2, {})
        distributed.resolve_device("cuda", 2)
