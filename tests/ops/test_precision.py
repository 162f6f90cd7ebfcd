"""set_tf32 (issue 14, defect 7): after it, every precision getter torch and inductor read still answers.

torch >= 2.9 has two APIs for TF32 (legacy allow_tf32 / set_float32_matmul_precision, and the per-backend
fp32_precision). Setting only the new cuda.matmul one leaves the legacy matmul precision at "highest",
and torch.get_float32_matmul_precision() (inductor calls it under mode="max-autotune") and
torch.backends.cuda.matmul.allow_tf32 then raise "... mix of the legacy and new APIs ...". These are
process-wide flags that torch keeps on a CPU-only build too, so this runs on the CPU.
"""

import pytest
import torch

from stylenat.ops.precision import set_tf32


def _flags():
    return {
        "matmul_precision": torch.get_float32_matmul_precision(),
        "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "cuda_matmul_fp32_precision": torch.backends.cuda.matmul.fp32_precision,
        "cudnn_conv_fp32_precision": torch.backends.cudnn.conv.fp32_precision,
    }


@pytest.mark.parametrize("sequence", [(True,), (False,), (True, False), (False, True, True)])
def test_every_getter_answers_and_agrees_after_set_tf32(restore_tf32, sequence):
    cpu_matmul = torch.backends.mkldnn.matmul.fp32_precision
    for enabled in sequence:
        set_tf32(enabled)
        flags = _flags()  # raised RuntimeError ("mix of the legacy and new APIs") before the fix
        assert flags == {
            "matmul_precision": "high" if enabled else "highest",
            "cuda_matmul_allow_tf32": enabled,
            "cudnn_allow_tf32": enabled,
            "cuda_matmul_fp32_precision": "tf32" if enabled else "ieee",
            "cudnn_conv_fp32_precision": "tf32" if enabled else "ieee",
        }
        assert torch.backends.mkldnn.matmul.fp32_precision == cpu_matmul  # CPU matmuls left alone


def test_throughput_uses_the_shared_set_tf32():
    from stylenat.bench import generator as throughput

    assert throughput.set_tf32 is set_tf32
