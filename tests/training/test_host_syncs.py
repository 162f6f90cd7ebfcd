"""Issue 14, defect 5: random parameters reach a CUDA device without a blocking copy, and the per-step
stop/non-finite check costs no host sync when nothing is checked."""

from types import SimpleNamespace

import pytest
import torch

from stylenat.training import run
from stylenat.training.augment import to_device


def test_to_device_pins_and_copies_non_blocking_for_cuda(monkeypatch):
    calls = []

    def fake_pin(self):
        calls.append("pin")
        return self

    def fake_to(self, *args, **kwargs):
        calls.append(("to", args, kwargs))
        return self

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    monkeypatch.setattr(torch.Tensor, "to", fake_to)
    to_device(torch.zeros(3), torch.device("cuda", 0))
    assert calls == ["pin", ("to", (torch.device("cuda", 0),), {"non_blocking": True})]


def test_to_device_on_the_cpu_is_a_plain_copy_with_the_dtype():
    t = torch.arange(4)
    out = to_device(t, torch.device("cpu"), torch.float32)
    assert out.dtype == torch.float32 and torch.equal(out, t.float())


def _fake_trainer(distributed: bool, step: int = 1):
    return SimpleNamespace(
        rollback=None, env=SimpleNamespace(distributed=distributed), counters=SimpleNamespace(step=step)
    )


@pytest.fixture
def no_host_sync(monkeypatch):
    def forbidden(self):
        raise AssertionError("host sync (tolist) in a step with nothing to check")

    monkeypatch.setattr(torch.Tensor, "tolist", forbidden)


def test_nonfinite_off_single_process_reads_the_signal_without_a_sync(no_host_sync):
    signals = SimpleNamespace(requested=None)
    assert run.Trainer._step_flags(_fake_trainer(False), signals) == (False, False)
    signals.requested = "SIGTERM"
    assert run.Trainer._step_flags(_fake_trainer(False), signals) == (False, True)


def test_nonfinite_off_several_processes_agree_on_a_shared_schedule(no_host_sync, monkeypatch):
    signals = SimpleNamespace(requested="SIGTERM")
    for step in range(1, run.STOP_CHECK_EVERY):  # off-schedule: no collective, no sync
        assert run.Trainer._step_flags(_fake_trainer(True, step), signals) == (False, False)
    monkeypatch.setattr(run.dist, "all_reduce_max", lambda flags: flags)
    with pytest.raises(AssertionError, match="host sync"):  # on schedule: the one agreed round trip
        run.Trainer._step_flags(
            SimpleNamespace(**vars(_fake_trainer(True, run.STOP_CHECK_EVERY)), device="cpu"), signals
        )
