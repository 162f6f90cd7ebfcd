"""Low-level tensor operations: neighborhood attention, FIR resampling, Haar wavelets, the fused CPU
inference kernels, and the value checks every layer shares (``ops.checks``).

Exports load lazily, so that importing ``stylenat.ops.checks`` (config checks) does not import torch.
"""

import importlib

_EXPORTS = {
    "na2d": "stylenat.ops.na",
    "available_backends": "stylenat.ops.na",
    "Blur": "stylenat.ops.upfirdn",
    "Downsample": "stylenat.ops.upfirdn",
    "downsample2d": "stylenat.ops.upfirdn",
    "make_kernel": "stylenat.ops.upfirdn",
    "upfirdn2d": "stylenat.ops.upfirdn",
    "upsample2d": "stylenat.ops.upfirdn",
    "HaarTransform": "stylenat.ops.wavelet",
    "InverseHaarTransform": "stylenat.ops.wavelet",
    "haar_filters": "stylenat.ops.wavelet",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'stylenat.ops' has no attribute {name!r}")
