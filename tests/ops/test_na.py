"""Neighborhood attention against an independent per-pixel loop oracle (fp64) and NATTEN's window rule."""

import logging
import math

import pytest
import torch

from stylenat.ops import na2d
from stylenat.ops.na import (
    ENV_VAR,
    BackendUnavailable,
    available_backends,
    backend_override,
    dispatch,
    natten_backend,
    neighborhood,
    tiling,
    torch_backend,
)
from stylenat.ops.na.reference import na2d_reference
from stylenat.ops.na.torch_backend import na2d_torch
from stylenat.ops.precision import set_tf32

# ----------------------------------------------------------------------------------------------------
# Oracle, written from NATTEN's published window/bias rules (not from our implementation)
# ----------------------------------------------------------------------------------------------------


def natten_window_start(i: int, length: int, kernel_size: int, dilation: int) -> int:
    """NATTEN's get_window_start, verbatim in logic: start of i's window in original coordinates."""
    r = kernel_size // 2
    if dilation <= 1:
        return max(i - r, 0) + ((length - i - r - 1) if i + r >= length else 0)
    if i - r * dilation < 0:
        return i % dilation
    if i + r * dilation >= length:
        imodd = i % dilation
        a = (length // dilation) * dilation
        b = length - a
        if imodd < b:
            return length - b + imodd - 2 * r * dilation
        return a + imodd - kernel_size * dilation
    return i - r * dilation


def loop_oracle(q, k, v, kernel_size, dilation, rpb, scale):
    """Per-pixel loop: window keys, logits (+ bias), softmax, weighted sum; vectorised over B, heads."""
    _, _, height, width, _ = q.shape
    rows = []
    for y in range(height):
        sy = natten_window_start(y, height, kernel_size, dilation)
        key_y = [sy + dilation * m for m in range(kernel_size)]
        row = []
        for x in range(width):
            sx = natten_window_start(x, width, kernel_size, dilation)
            key_x = [sx + dilation * m for m in range(kernel_size)]
            ky = torch.tensor([a for a in key_y for _ in key_x])
            kx = torch.tensor([b for _ in key_y for b in key_x])
            keys, values = k[:, :, ky, kx], v[:, :, ky, kx]  # [B, heads, k*k, D]
            logits = scale * torch.einsum("bhd,bhnd->bhn", q[:, :, y, x], keys)
            if rpb is not None:
                by = (ky - y) // dilation + kernel_size - 1
                bx = (kx - x) // dilation + kernel_size - 1
                logits = logits + rpb[:, by, bx]
            row.append(torch.einsum("bhn,bhnd->bhd", logits.softmax(-1), values))
        rows.append(torch.stack(row, dim=2))
    return torch.stack(rows, dim=2)


def _inputs(shape, heads, kernel_size, with_rpb, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(shape, generator=gen, dtype=dtype).requires_grad_() for _ in range(3))
    rpb = None
    if with_rpb:
        span = 2 * kernel_size - 1
        rpb = torch.randn(heads, span, span, generator=gen, dtype=dtype).requires_grad_()
    return q, k, v, rpb


def _outputs_and_grads(fn, q, k, v, rpb, seed=1):
    out = fn()
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    inputs = [q, k, v] + ([rpb] if rpb is not None else [])
    return out, torch.autograd.grad((out * weight).sum(), inputs)


def _cases():
    for height, width in [(9, 13), (15, 10), (16, 16)]:
        for kernel_size in (3, 5, 7):
            for dilation in (1, 2, 3, 4):
                if kernel_size * dilation <= min(height, width):
                    yield height, width, kernel_size, dilation


# ----------------------------------------------------------------------------------------------------
# Window rule
# ----------------------------------------------------------------------------------------------------


def test_window_rule_enumerated_by_hand():
    # L=10, d=3: groups {0,3,6,9}, {1,4,7}, {2,5,8}; k=3 windows hold 3 members of the own group.
    assert neighborhood(10, 3, 3) == [
        [0, 3, 6], [1, 4, 7], [2, 5, 8],
        [0, 3, 6], [1, 4, 7], [2, 5, 8],
        [3, 6, 9], [1, 4, 7], [2, 5, 8],
        [3, 6, 9],
    ]  # fmt: skip
    assert neighborhood(7, 3, 1) == [
        [0, 1, 2],
        [0, 1, 2],
        [1, 2, 3],
        [2, 3, 4],
        [3, 4, 5],
        [4, 5, 6],
        [4, 5, 6],
    ]


@pytest.mark.parametrize("length", [7, 8, 10, 13, 16, 23, 64])
def test_window_rule_matches_natten_formula(length):
    for kernel_size in (1, 3, 5, 7):
        for dilation in range(1, length // kernel_size + 1):
            windows = neighborhood(length, kernel_size, dilation)
            for i, window in enumerate(windows):
                start = natten_window_start(i, length, kernel_size, dilation)
                assert window == [start + dilation * m for m in range(kernel_size)]
                assert i in window and all(p % dilation == i % dilation for p in window)


# ----------------------------------------------------------------------------------------------------
# Values and gradients against the loop oracle (fp64, 1e-10)
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_rpb", [False, True], ids=["no_rpb", "rpb"])
@pytest.mark.parametrize("height,width,kernel_size,dilation", list(_cases()))
def test_matches_loop_oracle(height, width, kernel_size, dilation, with_rpb, monkeypatch):
    heads, dim = 3, 4
    q, k, v, rpb = _inputs((2, heads, height, width, dim), heads, kernel_size, with_rpb)
    scale = dim**-0.5
    want, want_grads = _outputs_and_grads(
        lambda: loop_oracle(q, k, v, kernel_size, dilation, rpb, scale), q, k, v, rpb
    )
    # Default tiling with everything re-made in the backward, the probabilities kept from the forward,
    # or the probabilities and the gathered tiles kept; then small odd tiles (several tiles per group,
    # partial last tiles, clamped halos) with each of those.
    for keep, tiles in [(keep, tiles) for tiles in (None, (2, 3)) for keep in (None, "probs", "tiles")]:
        monkeypatch.setattr(torch_backend, "_keep_level", lambda q, plan, keep=keep: keep)
        got, got_grads = _outputs_and_grads(
            lambda tiles=tiles: na2d_torch(q, k, v, kernel_size, dilation, rpb, scale, tiles),
            q,
            k,
            v,
            rpb,
        )
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
        for g, w in zip(got_grads, want_grads):
            torch.testing.assert_close(g, w, rtol=0, atol=1e-10)


def test_keep_level_follows_the_byte_budget(monkeypatch):
    # 16x16, k=7, 4x8 tiles: 8 tiles of 32 queries and 10x14 keys per (batch, head) item.
    plan = tiling.tile_plan(16, 16, 7, 1, (4, 8), torch.device("cpu"))
    q = torch.zeros(2, 3, 16, 16, 8)
    n_tiles = 2 * 3 * 8
    probs_bytes = n_tiles * 32 * 140 * 4
    tiles_bytes = n_tiles * (32 + 2 * 140) * 8 * 4
    for budget, want in (
        (probs_bytes + tiles_bytes, "tiles"),
        (probs_bytes + tiles_bytes - 1, "probs"),
        (probs_bytes, "probs"),
        (probs_bytes - 1, None),
    ):
        monkeypatch.setattr(torch_backend, "KEEP_BYTES", budget)
        assert torch_backend._keep_level(q, plan) == want, budget


@pytest.mark.parametrize("dilation", [1, 3])
def test_larger_map_multi_tile_matches_oracle(dilation):
    # 23x30, k=7: several 8-query tiles per axis with clamped halos; d=3 gives uneven groups.
    q, k, v, rpb = _inputs((1, 2, 23, 30, 3), 2, 7, True, seed=dilation)
    want, want_grads = _outputs_and_grads(lambda: loop_oracle(q, k, v, 7, dilation, rpb, 0.7), q, k, v, rpb)
    got, got_grads = _outputs_and_grads(
        lambda: na2d(q, k, v, 7, dilation, rpb=rpb, scale=0.7, backend="torch"), q, k, v, rpb
    )
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-10)


def test_reference_matches_loop_oracle():
    # The vectorised reference is the benchmark's yardstick: pin it to the oracle too.
    q, k, v, rpb = _inputs((2, 2, 11, 14, 4), 2, 3, True)
    want = loop_oracle(q, k, v, 3, 3, rpb, 0.5)
    torch.testing.assert_close(na2d_reference(q, k, v, 3, 3, rpb, 0.5), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("size", [5, 7])
def test_kernel_equal_to_map_is_full_attention(size):
    heads, dim = 2, 8
    q, k, v, rpb = _inputs((2, heads, size, size, dim), heads, size, True)
    got = na2d(q, k, v, size, rpb=rpb, backend="torch")
    # Plain softmax attention over all tokens, bias indexed by the 2-D offset.
    py, px = (t.reshape(-1) for t in torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij"))
    dy, dx = py[None, :] - py[:, None], px[None, :] - px[:, None]  # [query token, key token]
    bias = rpb[:, dy + size - 1, dx + size - 1]
    flat = [t.flatten(2, 3) for t in (q, k, v)]
    logits = dim**-0.5 * flat[0] @ flat[1].transpose(-1, -2) + bias
    want = (logits.softmax(-1) @ flat[2]).view_as(q)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_float32_stylenat_split_against_reference():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 32, 32, 16) for _ in range(3))
    rpb = 0.02 * torch.randn(2, 13, 13)
    for heads, dilation in ((slice(0, 2), 1), (slice(2, 4), 4)):
        args = (q[:, heads], k[:, heads], v[:, heads], 7, dilation, rpb)
        torch.testing.assert_close(na2d(*args), na2d_reference(*args), rtol=1e-5, atol=1e-5)


def test_non_contiguous_inputs_and_no_grad():
    q, k, v, rpb = _inputs((2, 4, 10, 12, 8), 2, 3, True)
    sl = slice(1, 3)
    with torch.no_grad():
        got = na2d(q[:, sl], k[:, sl], v[:, sl], 3, 2, rpb=rpb)
    assert not got.requires_grad and got.shape == (2, 2, 10, 12, 8)
    torch.testing.assert_close(
        got, na2d_reference(q[:, sl], k[:, sl], v[:, sl], 3, 2, rpb), rtol=0, atol=1e-12
    )


def test_scale_multiplies_q():
    q, k, v, _ = _inputs((1, 2, 8, 9, 4), 2, 3, False)
    got = na2d(q, k, v, 3, scale=0.3)
    torch.testing.assert_close(got, na2d(q * (0.3 / math.sqrt(1 / 4)), k, v, 3), rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------------------------------
# Layouts the attention layer feeds: strided q/k/v views of one qkv tensor, token-major out=
# ----------------------------------------------------------------------------------------------------


def _qkv_views(batch, height, width, heads, dim, seed=0, requires_grad=False):
    """q, k, v [B, heads, H, W, D] as views of one [B, H, W, 3, heads, D] tensor (the layer's qkv output)."""
    gen = torch.Generator().manual_seed(seed)
    qkv = torch.randn(batch, height, width, 3, heads, dim, generator=gen, dtype=torch.float64)
    qkv.requires_grad_(requires_grad)
    return qkv, qkv.permute(3, 0, 4, 1, 2, 5).unbind(0)


# (H, W, k, d, tiles, strided, direct): plans whose pieces are all affine grids (results straight into the
# output), grids with partial tiles (results through the slot buffer), and pieces gathered by index
LAYOUT_CASES = [
    (16, 24, 5, 1, None, True, True),
    (16, 16, 3, 4, None, True, True),
    (9, 13, 3, 1, (2, 3), True, False),
    (13, 11, 3, 2, None, False, False),
]


@pytest.mark.parametrize("height,width,kernel_size,dilation,tiles,strided,direct", LAYOUT_CASES)
def test_strided_qkv_views_values_and_grads(height, width, kernel_size, dilation, tiles, strided, direct):
    heads = 3
    rpb = torch.randn(
        heads, 2 * kernel_size - 1, 2 * kernel_size - 1, dtype=torch.float64, requires_grad=True
    )
    qkv, (q, k, v) = _qkv_views(2, height, width, heads, 4, requires_grad=True)
    plan = tiling.tile_plan(
        height,
        width,
        kernel_size,
        dilation,
        tiles or tiling.pick_tiles(height, width, kernel_size, dilation),
        torch.device("cpu"),
    )
    assert (plan.strided, plan.direct) == (strided, direct)
    got = na2d_torch(q, k, v, kernel_size, dilation, rpb, 0.5, tiles)
    grad = torch.randn(got.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    got_grads = torch.autograd.grad(got, (qkv, rpb), grad)
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v, rpb)]
    want = na2d_reference(*leaves[:3], kernel_size, dilation, leaves[3], 0.5)
    want_grads = torch.autograd.grad(want, leaves, grad)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    torch.testing.assert_close(got_grads[0], torch.stack(want_grads[:3], 3).permute(0, 2, 4, 3, 1, 5))
    torch.testing.assert_close(got_grads[1], want_grads[3], rtol=0, atol=1e-10)
    with torch.no_grad():  # the no-autograd path (no autograd.Function) gives the same values
        torch.testing.assert_close(na2d_torch(q, k, v, kernel_size, dilation, rpb, 0.5, tiles), want)


@pytest.mark.parametrize("height,width,kernel_size,dilation,tiles,strided,direct", LAYOUT_CASES)
def test_out_writes_into_a_token_major_buffer(height, width, kernel_size, dilation, tiles, strided, direct):
    heads, dim = 4, 4
    _, (q, k, v) = _qkv_views(2, height, width, heads, dim, seed=1)
    rpb = torch.randn(2, 2 * kernel_size - 1, 2 * kernel_size - 1, dtype=torch.float64)
    buffer = torch.full((2, height, width, heads, dim), float("nan"), dtype=torch.float64)
    for sl in (slice(0, 2), slice(2, 4)):  # two head groups into one [B, H, W, heads, D] buffer
        target = buffer[:, :, :, sl].permute(0, 3, 1, 2, 4)
        got = na2d_torch(q[:, sl], k[:, sl], v[:, sl], kernel_size, dilation, rpb, 0.5, tiles, out=target)
        assert got.data_ptr() == target.data_ptr()
    for sl in (slice(0, 2), slice(2, 4)):
        want = na2d_reference(q[:, sl], k[:, sl], v[:, sl], kernel_size, dilation, rpb, 0.5)
        torch.testing.assert_close(buffer[:, :, :, sl].permute(0, 3, 1, 2, 4), want, rtol=0, atol=1e-10)


def test_out_argument_checks():
    q, k, v = _small()
    out = torch.empty(1, 16, 16, 2, 4).permute(0, 3, 1, 2, 4)
    assert na2d(q, k, v, 3, out=out) is out
    torch.testing.assert_close(out, na2d_reference(q, k, v, 3))
    with pytest.raises(ValueError, match=r"out must match q \(\(1, 2, 16, 16, 4\)"):
        na2d(q, k, v, 3, out=torch.empty(1, 2, 16, 15, 4))
    with pytest.raises(RuntimeError, match="does not support autograd"):
        na2d(q.requires_grad_(), k, v, 3, out=out)


def test_inference_mode_then_no_grad_reuses_scratch():
    # The CPU scratch buffers outlive a call: made under inference_mode they must still be writable later.
    q, k, v = _small()
    with torch.inference_mode():
        first = na2d(q, k, v, 5)
    with torch.no_grad():
        second = na2d(q, k, v, 5)
    torch.testing.assert_close(first, second, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------
# Errors, backend selection
# ----------------------------------------------------------------------------------------------------


def _small(shape=(1, 2, 16, 16, 4)):
    return [torch.randn(shape) for _ in range(3)]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"kernel_size": 4}, "kernel_size must be an odd integer >= 1, got 4"),
        ({"kernel_size": 0}, "got 0"),
        ({"kernel_size": 3, "dilation": 0}, "dilation must be an integer >= 1, got 0"),
        ({"kernel_size": 7, "dilation": 4}, r"kernel_size 7 \* dilation 4 = 28 exceeds feature map 16x16"),
        (
            {"kernel_size": 3, "rpb": torch.zeros(2, 3, 3)},
            r"rpb must have shape \(2, 5, 5\), got \(2, 3, 3\)",
        ),
        ({"kernel_size": 3, "backend": "cuda"}, "unknown na2d backend 'cuda'.*auto, torch, natten"),
    ],
)
def test_errors(kwargs, match):
    q, k, v = _small()
    with pytest.raises(ValueError, match=match):
        na2d(q, k, v, **kwargs)


def test_error_non_square_limit_names_both_sides():
    q, k, v = _small((1, 1, 20, 9, 4))
    with pytest.raises(ValueError, match="kernel_size 5 \\* dilation 2 = 10 exceeds feature map 20x9"):
        na2d(q, k, v, 5, 2)


def test_error_shape_mismatch():
    q, k, _ = _small()
    with pytest.raises(ValueError, match=r"q, k, v shapes differ: .*v \(1, 2, 16, 15, 4\)"):
        na2d(q, k, torch.randn(1, 2, 16, 15, 4), 3)


def test_forcing_natten_where_unavailable_raises():
    q, k, v = _small()
    with pytest.raises(RuntimeError, match="na2d backend 'natten' is unavailable: "):
        na2d(q, k, v, 3, backend="natten")


def test_env_var_overrides_auto_only(monkeypatch):
    q, k, v = _small()
    monkeypatch.setenv(ENV_VAR, "natten")
    with pytest.raises(RuntimeError, match="'natten' is unavailable"):
        na2d(q, k, v, 3)
    torch.testing.assert_close(na2d(q, k, v, 3, backend="torch"), na2d_reference(q, k, v, 3))
    monkeypatch.setenv(ENV_VAR, "torch")
    torch.testing.assert_close(na2d(q, k, v, 3), na2d_reference(q, k, v, 3))
    monkeypatch.setenv(ENV_VAR, "bogus")
    with pytest.raises(ValueError, match=f"{ENV_VAR}='bogus' is not a backend"):
        na2d(q, k, v, 3)


def test_backend_logged_once(monkeypatch, caplog):
    monkeypatch.setattr(dispatch, "_logged_backends", set())
    q, k, v = _small()
    with caplog.at_level(logging.INFO, logger=dispatch.logger.name):
        na2d(q, k, v, 3)
        na2d(q, k, v, 5)
    messages = [r.getMessage() for r in caplog.records if r.name == dispatch.logger.name]
    assert len(messages) == 1 and "torch backend" in messages[0]


def test_backends_raise_where_they_cannot_run():
    # Only the dispatcher chooses: a backend called for a call it cannot serve raises (a RuntimeError).
    q, k, v = _small()
    with pytest.raises(BackendUnavailable, match="^na2d backend 'natten' is unavailable: ") as err:
        natten_backend.na2d_natten(q, k, v, 3)
    assert isinstance(err.value, RuntimeError) and err.value.backend == "natten"
    with pytest.raises(ValueError, match="kernel_size must be an odd integer >= 1, got 4"):
        na2d_torch(q, k, v, 4)  # called directly, a backend checks its arguments too


def test_available_backends_cpu():
    assert available_backends("cpu") == ["torch"]


# ----------------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU)
# ----------------------------------------------------------------------------------------------------


# What the CUDA tests check, per dtype: every element within atol + rtol * |reference| of a float32
# reference (the torch backend or the gather oracle) on the same rounded inputs, rtol = atol = these.
GPU_FORWARD_TOL = {torch.float32: 1e-4, torch.float16: 3e-2, torch.bfloat16: 3e-2}
GPU_BACKWARD_TOL = {torch.float32: 1e-4, torch.bfloat16: 5e-2}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dilation", [1, 2, 4])
def test_natten_matches_torch_backend(dtype, dilation):
    if natten_backend.natten_import()[0] is None:
        pytest.skip(f"natten backend unavailable: {natten_backend.natten_import()[1]}")
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 32, 24, 32, device="cuda").to(dtype).requires_grad_() for _ in range(3))
    grad = torch.randn(2, 4, 32, 24, 32, device="cuda")
    out = na2d(q, k, v, 7, dilation, backend="natten")
    grads = torch.autograd.grad(out, (q, k, v), grad.to(dtype))
    ref_leaves = [t.detach().float().requires_grad_() for t in (q, k, v)]
    tf32 = torch.backends.cuda.matmul.fp32_precision == "tf32"
    set_tf32(False)  # a float32 reference without TF32
    try:
        ref = na2d(*ref_leaves, 7, dilation, backend="torch")
        ref_grads = torch.autograd.grad(ref, ref_leaves, grad)
    finally:
        set_tf32(tf32)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, rtol=GPU_FORWARD_TOL[dtype], atol=GPU_FORWARD_TOL[dtype])
    for name, got, want in zip("qkv", grads, ref_grads):
        tol = GPU_BACKWARD_TOL[dtype]
        torch.testing.assert_close(got.float(), want, rtol=tol, atol=tol, msg=f"grad {name}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_torch_backend_half_precision_on_cuda(dtype):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 32, 32, 32, device="cuda") for _ in range(3))
    rpb = 0.02 * torch.randn(4, 13, 13, device="cuda")
    q, k, v = (t.to(dtype) for t in (q, k, v))
    want = na2d_reference(q.float(), k.float(), v.float(), 7, 4, rpb)
    tol = GPU_FORWARD_TOL[dtype]
    for rpb_dtype in (dtype, torch.float32):  # fp32 RPB with half q: what autocast hands the op
        got = na2d(q, k, v, 7, 4, rpb=rpb.to(rpb_dtype), backend="torch")
        assert got.dtype == dtype
        torch.testing.assert_close(got.float(), want, rtol=tol, atol=tol, msg=f"rpb {rpb_dtype}")


def test_backend_override_wins_over_the_requested_backend(monkeypatch):
    q, k, v = _small()
    monkeypatch.setenv(ENV_VAR, "natten")
    with backend_override("torch"):
        torch.testing.assert_close(na2d(q, k, v, 3, backend="natten"), na2d_reference(q, k, v, 3))
        torch.testing.assert_close(na2d(q, k, v, 3), na2d_reference(q, k, v, 3))
    with pytest.raises(RuntimeError, match="'natten' is unavailable"):  # restored on exit
        na2d(q, k, v, 3)
    with pytest.raises(ValueError, match="concrete backend"):
        with backend_override("auto"):
            pass
