"""The tiny generator config the inference tests share: 16x16, MHSA at 4x4, one NA group at 8x8, two head
groups (dilation 1 and 2) at 16x16, output in [-1, 1]; seconds to build and sample on a CPU."""

TINY_G16 = dict(
    resolution=16,
    z_dim=16,
    w_dim=16,
    n_mlp=2,
    channels=[32, 32, 32],
    min_heads=2,
    head_channels=16,
    kernels=[[3], [3], [3]],
    dilations=[[1], [1], [1, 2]],
    output_normalization="minus_one_one",
)
