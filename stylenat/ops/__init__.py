"""Low-level tensor operations: neighborhood attention, FIR resampling, Haar wavelets."""

from stylenat.ops.na import na2d
from stylenat.ops.upfirdn import Blur, Downsample, downsample2d, make_kernel, upfirdn2d, upsample2d
from stylenat.ops.wavelet import HaarTransform, InverseHaarTransform, haar_filters
