"""Training with train.amp=bf16 on the CPU (issue 16): resume equivalence and the divergence guard hold
as in fp32 (the same tests as test_resume / test_faults, in bf16)."""

import pytest
import torch

from stylenat.ops.precision import cpu_bf16_supported
from tests.training.helpers import max_diff
from tests.training.runs import FAULT_BATCH, fault_records, fault_train, poison, resume_train

AMP = "train.amp=bf16"
pytestmark = pytest.mark.skipif(not cpu_bf16_supported(), reason="no native bf16 on this CPU")


@pytest.mark.slow
def test_bf16_resume_equals_uninterrupted_bf16(tmp_path):
    full = resume_train(tmp_path / "full", 5, AMP)
    resume_train(tmp_path / "split", 3, AMP)
    resumed = resume_train(tmp_path / "split", 5, AMP)  # auto-resume
    assert resumed.counters.step == full.counters.step == 5
    diffs = {
        name: max_diff(
            getattr(full.gan, name).state_dict(), getattr(resumed.gan, name).state_dict()
        )
        for name in ("G", "D", "G_ema", "opt_G", "opt_D")
    }
    assert all(d == 0.0 for d in diffs.values()), diffs
    # bf16 really ran: the same 5 steps in fp32 end elsewhere
    fp32 = resume_train(tmp_path / "fp32", 5)
    assert max_diff(fp32.gan.G.state_dict(), full.gan.G.state_dict()) > 0


@pytest.mark.slow
def test_bf16_nonfinite_step_is_rolled_back_and_its_batch_skipped(tmp_path, monkeypatch):
    poison(monkeypatch, {2}, "loss")
    trainer = fault_train(tmp_path / "run", 4, AMP)
    assert trainer.counters.step == 4 and trainer.counters.skipped_images == FAULT_BATCH
    assert all(
        torch.isfinite(p).all()
        for m in (trainer.gan.G, trainer.gan.D, trainer.gan.G_ema)
        for p in m.parameters()
    )
    events = [r for r in fault_records(tmp_path / "run") if r.get("event") == "nonfinite"]
    assert len(events) == 1 and events[0]["action"] == "rollback" and events[0]["failed_step"] == 2
