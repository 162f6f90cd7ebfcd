"""The tiny generator configs the tests share (define a tiny model here, not in a test module).

TINY_G16, the inference tests': 16x16, MHSA at 4x4, one NA group at 8x8, two head groups (dilation 1 and 2)
at 16x16, output in [-1, 1]; seconds to build and sample on a CPU. TINY_G32 (and ``tiny_g32()``, the built,
seeded generator): the model and op tests'.
"""

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

# The models' tests' generator: 32x32, four stages, two head groups from 16x16 (tests/models, tests/ops).
TINY_G32 = dict(
    resolution=32,
    z_dim=32,
    w_dim=32,
    n_mlp=2,
    channels=[64, 64, 32, 32],
    min_heads=4,
    kernels=[[3], [5], [5], [3]],
    dilations=[[1], [1], [1, 2], [1, 4]],
    output_normalization="minus_one_one",
)


def tiny_g32(*, na_backend="auto", checkpoint_blocks=False, **overrides):
    """The TINY_G32 generator (config overrides as keywords), seeded."""
    import torch

    from stylenat.models.build import build_generator

    torch.manual_seed(0)
    return build_generator({**TINY_G32, **overrides}, na_backend=na_backend, checkpoint_blocks=checkpoint_blocks)

# tests/test_attention_maps.py's, demo-like (configs/model/tiny.yaml, smaller): MHSA at 4x4, one NA group at 8x8, two groups at 16 and 32,
# two heads per group at 32x32 so the head average is exercised
TINY_ATTENTION32 = dict(
    resolution=32,
    z_dim=16,
    w_dim=16,
    n_mlp=2,
    channels=[32, 32, 32, 64],
    min_heads=2,
    head_channels=16,
    kernels=[[3], [3], [3], [5]],
    dilations=[[1], [1], [1, 2], [1, 4]],
    output_normalization="minus_one_one",
)

# tests/test_evaluate.py's: 32x32, four stages of 32 channels.
TINY_EVAL32 = dict(
    resolution=32,
    z_dim=16,
    w_dim=16,
    n_mlp=2,
    channels=[32, 32, 32, 32],
    min_heads=2,
    head_channels=16,
    kernels=[[3], [3], [3], [3]],
    dilations=[[1], [1], [1, 2], [1, 4]],
    output_normalization="minus_one_one",
)

# tests/test_snapshot.py's: 8x8, two stages.
TINY_G8 = dict(
    resolution=8,
    z_dim=8,
    w_dim=8,
    n_mlp=1,
    channels=[16, 16],
    min_heads=2,
    head_channels=8,
    kernels=[[3], [3]],
    dilations=[[1], [1]],
)
