"""The training step's optimizers (issue 25): Adam's fused kernel on the CPU as on CUDA, and the cached
reduced-precision weight casts the fused CPU forward reads stay in step with the parameters it writes."""

import torch

from stylenat.cli import compose_config
from stylenat.ops import buffers
from stylenat.training.run import Trainer, prepare_run
from tests.training.helpers import CONFIG_DIR, TINY, steps_kimg
from tests.training.runs import CPU


def test_cpu_step_uses_fused_adam_and_casts_follow_each_update(tmp_path):
    cfg = compose_config(CONFIG_DIR, [*TINY, f"run_dir={tmp_path}", f"train.total_kimg={steps_kimg(1)}"])
    trainer = Trainer(prepare_run(cfg, CPU))
    gan = trainer.gan
    assert all(group["fused"] for opt in (gan.opt_G, gan.opt_D) for group in opt.param_groups)
    weight = gan.G.stages[-1].blocks[0].mlp.fc1.weight
    before = buffers.cast_weight(weight, torch.bfloat16).clone()  # what a bf16 forward read before the step
    trainer.fit()
    after = buffers.cast_weight(weight, torch.bfloat16)
    assert not torch.equal(after, before)
    assert torch.equal(after, weight.detach().bfloat16())
