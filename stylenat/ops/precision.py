"""Process-wide float32 precision switches for CUDA (TF32), in one place for training and measurements.

torch >= 2.9 has two APIs for TF32: the legacy ones (``torch.set_float32_matmul_precision``,
``torch.backends.cuda.matmul.allow_tf32``, ``torch.backends.cudnn.allow_tf32``) and the per-backend
``fp32_precision`` attributes. When only the new ones are set, the legacy state disagrees with them and its
getters raise ("... you have used mix of the legacy and new APIs ..."): ``torch.get_float32_matmul_precision()``,
which inductor calls under ``torch.compile(mode="max-autotune")`` (select_algorithm's cache keys), and
``torch.backends.cuda.matmul.allow_tf32`` / ``torch.backends.cudnn.allow_tf32``. ``set_tf32`` therefore sets
the legacy state first and the new attributes to the matching values after it, so every getter answers
and agrees.
"""

from __future__ import annotations

import torch


def set_tf32(enabled: bool) -> None:
    """TF32 for CUDA matmuls and cuDNN convolutions (and RNNs) on or off, legacy and new APIs in agreement.

    The CPU's oneDNN matmul precision (``torch.backends.mkldnn.matmul.fp32_precision``, which the legacy
    ``set_float32_matmul_precision`` also moves) is left as it was.
    """
    matmul = torch.backends.cuda.matmul
    if not hasattr(matmul, "fp32_precision"):  # torch < 2.9: the legacy flags are the only API
        matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled
        return
    precision = "tf32" if enabled else "ieee"
    cpu_matmul = torch.backends.mkldnn.matmul.fp32_precision
    # Legacy first (each legacy setter resets the new attributes it covers), then the new ones.
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    torch.backends.mkldnn.matmul.fp32_precision = cpu_matmul
    torch.backends.cudnn.allow_tf32 = enabled
    matmul.fp32_precision = precision
    torch.backends.cudnn.conv.fp32_precision = precision
    torch.backends.cudnn.rnn.fp32_precision = precision
