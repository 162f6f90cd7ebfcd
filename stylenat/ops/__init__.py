"""Low-level tensor operations: neighborhood attention, FIR resampling, Haar wavelets, the fused CPU
inference kernels."""

from stylenat.ops.na import available_backends, na2d
from stylenat.ops.upfirdn import Blur, Downsample, downsample2d, make_kernel, upfirdn2d, upsample2d
from stylenat.ops.wavelet import HaarTransform, InverseHaarTransform, haar_filters

__all__ = [
    "Blur",
    "Downsample",
    "HaarTransform",
    "InverseHaarTransform",
    "available_backends",
    "downsample2d",
    "haar_filters",
    "make_kernel",
    "na2d",
    "upfirdn2d",
    "upsample2d",
]
