"""The flex-attention NA backend against the brute-force oracle.

Compiled flex on the CPU (torch 2.14) is forward-only, float32/float16/bfloat16, static shapes: every new
problem shape costs a C++ compile (10-25 s on a loaded 2-core machine), so the compiled tests use two
shapes and vary kernel size and dilation inside them (same tensor shapes: no recompile). The full
(shape, k, d, rpb) grid runs through flex's eager path (``compile=False``), which evaluates the very same
mask_mod / score_mod / token order.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip(
    "torch.nn.attention.flex_attention", reason="torch has no flex_attention (needs torch >= 2.5)"
)

from torch.nn.attention.flex_attention import create_block_mask  # noqa: E402

from stylenat.ops.na import ENV_VAR, BackendUnavailable, available_backends, na2d  # noqa: E402
from stylenat.ops.na import flex_backend as na_flex_module  # noqa: E402
from stylenat.ops.na.flex_backend import _plan, available, block_mask, na2d_flex, unavailable  # noqa: E402

try:
    from stylenat.ops.na.reference import na2d_reference
except ImportError:  # pragma: no cover - tiny loop oracle when the shared reference is missing

    def _start(i, length, k, d):
        g, j = i % d, i // d
        group_len = len(range(g, length, d))
        return g + d * min(max(j - k // 2, 0), group_len - k)

    def na2d_reference(q, k, v, kernel_size, dilation=1, rpb=None, scale=None):
        _, _, height, width, dim = q.shape
        scale = dim**-0.5 if scale is None else scale
        out = torch.empty_like(q)
        for y in range(height):
            for x in range(width):
                ys = [_start(y, height, kernel_size, dilation) + dilation * m for m in range(kernel_size)]
                xs = [_start(x, width, kernel_size, dilation) + dilation * m for m in range(kernel_size)]
                keys = k[:, :, ys][:, :, :, xs].flatten(2, 3)
                vals = v[:, :, ys][:, :, :, xs].flatten(2, 3)
                logits = torch.einsum("bhd,bhnd->bhn", q[:, :, y, x] * scale, keys)
                if rpb is not None:
                    ry = [(yy - y) // dilation + kernel_size - 1 for yy in ys]
                    rx = [(xx - x) // dilation + kernel_size - 1 for xx in xs]
                    logits = logits + rpb[:, ry][:, :, rx].flatten(1, 2)
                out[:, :, y, x] = torch.einsum("bhn,bhnd->bhd", logits.softmax(-1), vals)
        return out


# compile=False is deliberate here (flex's eager reference evaluates the same mask_mod / score_mod)
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")

B, HEADS, DIM = 2, 2, 8


def _inputs(height, width, kernel_size, use_rpb, dtype=torch.float32, device="cpu", seed=0, dim=DIM):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, HEADS, height, width, dim, generator=gen, dtype=dtype) for _ in range(3))
    rpb = (
        torch.randn(HEADS, 2 * kernel_size - 1, 2 * kernel_size - 1, generator=gen, dtype=dtype)
        if use_rpb
        else None
    )
    move = (lambda t: None if t is None else t.to(device)) if device != "cpu" else (lambda t: t)
    return move(q), move(k), move(v), move(rpb)


# Groups wider than a block: tokens are reordered into (4, 32) / (8, 16) tiles when that is sparser.
WIDE = [(4, 260, 3, 1), (8, 300, 5, 1), (6, 270, 3, 2)]


def _grid():
    for height, width in ((9, 13), (16, 16), (12, 20)):
        for kernel_size in (3, 5, 7):
            for dilation in (1, 2, 3):
                if kernel_size * dilation <= min(height, width):
                    yield height, width, kernel_size, dilation


# ----------------------------------------------------------------------------------------------------
# Block mask: analytic construction == create_block_mask over the same mask_mod
# ----------------------------------------------------------------------------------------------------


def _rows(num, idx):
    return [sorted(idx[r, : num[r]].tolist()) for r in range(num.numel())]


@pytest.mark.parametrize(
    "height,width,kernel_size,dilation",
    [
        (9, 13, 3, 2),
        (12, 20, 7, 1),
        (40, 50, 3, 1),
        (40, 50, 5, 4),
        (33, 47, 3, 5),
        (64, 64, 7, 8),
        (15, 15, 15, 1),  # the window is the whole map: has a full block
        *WIDE,
    ],
)
def test_block_mask_matches_create_block_mask(height, width, kernel_size, dilation):
    ours = block_mask(height, width, kernel_size, dilation)
    assert ours is block_mask(height, width, kernel_size, dilation)  # cached
    length = height * width
    ref = create_block_mask(ours.mask_mod, None, None, length, length, device="cpu")
    assert _rows(ours.kv_num_blocks[0, 0], ours.kv_indices[0, 0]) == _rows(
        ref.kv_num_blocks[0, 0], ref.kv_indices[0, 0]
    )
    assert _rows(ours.full_kv_num_blocks[0, 0], ours.full_kv_indices[0, 0]) == _rows(
        ref.full_kv_num_blocks[0, 0], ref.full_kv_indices[0, 0]
    )


def test_full_blocks_are_found():
    assert block_mask(15, 15, 15, 1).full_kv_num_blocks.sum().item() == 1


def test_dilation_groups_keep_the_block_mask_sparse():
    # 64x64, k=7: dilation 8 regroups tokens into 8x8 sub-images, so each query block needs one key block
    assert block_mask(64, 64, 7, 8).kv_num_blocks.float().mean().item() <= 1.0
    assert block_mask(64, 64, 7, 1).kv_num_blocks.float().mean().item() <= 5.0


# ----------------------------------------------------------------------------------------------------
# Semantics on flex's eager path (same mask_mod / score_mod / layout as the compiled kernel)
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("height,width,kernel_size,dilation", list(_grid()))
def test_eager_matches_reference(height, width, kernel_size, dilation):
    for use_rpb in (False, True):
        q, k, v, rpb = _inputs(height, width, kernel_size, use_rpb, dtype=torch.float64)
        out = na2d_flex(q, k, v, kernel_size, dilation, rpb=rpb, compile=False)
        ref = na2d_reference(q, k, v, kernel_size, dilation, rpb=rpb)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("height,width,kernel_size,dilation", [*WIDE, (15, 15, 15, 1)])
def test_eager_matches_reference_tiled_and_full(height, width, kernel_size, dilation):
    if width > 128:
        assert _plan(height, width, kernel_size, dilation, "cpu").perm is not None  # tiled order in use
    q, k, v, rpb = _inputs(height, width, kernel_size, True)
    out = na2d_flex(q, k, v, kernel_size, dilation, rpb=rpb, compile=False)
    torch.testing.assert_close(
        out, na2d_reference(q, k, v, kernel_size, dilation, rpb=rpb), rtol=1e-5, atol=1e-5
    )


def test_eager_scale():
    q, k, v, rpb = _inputs(9, 13, 3, True, dtype=torch.float64)
    out = na2d_flex(q, k, v, 3, 2, rpb=rpb, scale=0.7, compile=False)
    torch.testing.assert_close(out, na2d_reference(q, k, v, 3, 2, rpb=rpb, scale=0.7), rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------------------------------
# Compiled kernel on the CPU (forward)
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compiled_cpu():
    """Skip the compiled tests where torch.compile of flex attention cannot run (no compiler, ...).

    The probe is the first compiled case below (same shapes), so its compile is not wasted."""
    q, k, v, rpb = _inputs(9, 13, 3, True)
    try:
        with torch.no_grad():
            na2d_flex(q, k, v, 3, 2, rpb=rpb)
    except Exception as error:  # noqa: BLE001 - any compile failure means "unavailable here"
        pytest.skip(f"compiled flex attention unavailable on the CPU: {type(error).__name__}: {error}"[:300])


COMPILED_CASES = [
    # (H, W, rpb, [(k, d), ...]): one compile per row (static shapes on the CPU); the (k, d) of a row share
    # every tensor shape, so they reuse the row's kernel
    (9, 13, True, [(3, 2), (3, 1), (3, 3)]),
    (12, 20, False, [(7, 1), (5, 2), (3, 3), (3, 1)]),
]


@pytest.mark.slow
@pytest.mark.parametrize("height,width,use_rpb,problems", COMPILED_CASES)
def test_compiled_forward_matches_reference(compiled_cpu, height, width, use_rpb, problems):
    for kernel_size, dilation in problems:
        q, k, v, rpb = _inputs(height, width, kernel_size, use_rpb, seed=kernel_size * 10 + dilation)
        with torch.no_grad():
            out = na2d_flex(q, k, v, kernel_size, dilation, rpb=rpb)
        ref = na2d_reference(
            q.double(),
            k.double(),
            v.double(),
            kernel_size,
            dilation,
            rpb=None if rpb is None else rpb.double(),
        )
        assert out.dtype == torch.float32 and out.shape == q.shape
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------
# CPU limits: no backward, no float64 in the compiled kernel -> the backend raises, the dispatcher
# ("auto") picks the torch backend
# ----------------------------------------------------------------------------------------------------


def test_unavailable_reasons():
    assert available("cpu") and not available("meta")
    q, k, v, rpb = _inputs(9, 13, 3, True)
    assert unavailable(q, k, v, rpb) is None
    assert "backward" in unavailable(q.requires_grad_(), k, v, rpb)
    with torch.no_grad():
        assert unavailable(q, k, v, rpb) is None
    assert "backward" in unavailable(q.detach(), k, v, rpb.requires_grad_())
    assert "float64" in unavailable(q.detach().double(), compile=True)
    assert unavailable(q.detach().double(), compile=False) is None
    assert "does not run on meta" in unavailable(torch.empty(1, 1, 9, 13, 8, device="meta"))


def test_cpu_backward_raises_and_auto_takes_the_torch_backend():
    q, k, v, rpb = _inputs(9, 13, 3, True, dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, rpb)]
    with pytest.raises(
        BackendUnavailable, match=r"^na2d backend 'flex' is unavailable: .*no backward on the CPU$"
    ):
        na2d_flex(*leaves[:3], 3, 2, rpb=leaves[3], compile=False)  # eager: float64 is fine, autograd is not
    with pytest.raises(BackendUnavailable, match="float64"):
        na2d_flex(*leaves[:3], 3, 2, rpb=leaves[3])
    out = na2d(*leaves[:3], 3, 2, rpb=leaves[3])
    grad = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, grad)
    ref_leaves = [t.clone().requires_grad_() for t in (q, k, v, rpb)]
    ref = na2d_reference(*ref_leaves[:3], 3, 2, rpb=ref_leaves[3])
    ref_grads = torch.autograd.grad(ref, ref_leaves, grad)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-8)


def test_cpu_float64_raises_and_auto_is_exact():
    q, k, v, rpb = _inputs(16, 16, 5, True, dtype=torch.float64)
    with pytest.raises(BackendUnavailable, match="float64"):
        na2d_flex(q, k, v, 5, 3, rpb=rpb)
    out = na2d(q, k, v, 5, 3, rpb=rpb)
    torch.testing.assert_close(out, na2d_reference(q, k, v, 5, 3, rpb=rpb), rtol=1e-10, atol=1e-10)


def test_plan_built_under_inference_mode_serves_a_later_call_with_grad(monkeypatch):
    # Issue 14, defect 6: throughput and benchmark code run the model under torch.inference_mode, which
    # made the cached plan's tensors inference tensors; a later call at the same shape with autograd
    # (training on CUDA) then failed with "Inference tensors cannot be saved for backward". On the CPU
    # eager flex reaches that point when only the RPB needs a gradient (flex's own check looks at q, k, v),
    # once our CPU no-backward gate is lifted; the forward is enough (it is what saves for backward).
    _plan.cache_clear()
    q, k, v, rpb = _inputs(10, 14, 5, True, seed=11)
    with torch.inference_mode():
        na2d_flex(q, k, v, 5, 2, rpb=rpb, compile=False)
    monkeypatch.setattr(na_flex_module, "unavailable", lambda *args, **kwargs: None)
    leaf = rpb.clone().requires_grad_()
    out = na2d_flex(q, k, v, 5, 2, rpb=leaf, compile=False)
    assert out.requires_grad
    torch.testing.assert_close(out.detach(), na2d_reference(q, k, v, 5, 2, rpb=rpb), rtol=1e-5, atol=1e-5)
    plan = _plan(10, 14, 5, 2, "cpu")
    tensors = [plan.perm, plan.inv_perm, plan.q_bias, plan.kv_bias, *plan.block_mask.as_tuple()]
    assert not any(t.is_inference() for t in tensors if isinstance(t, torch.Tensor))


def test_validation():
    q, k, v, rpb = _inputs(9, 13, 3, True)
    with pytest.raises(ValueError, match="rpb"):
        na2d_flex(q, k, v, 3, rpb=rpb[:, :3, :3])
    with pytest.raises(ValueError, match="exceeds"):
        na2d_flex(q, k, v, 3, dilation=4)
    with pytest.raises(ValueError, match="odd"):
        na2d_flex(q, k, v, 4)


# ----------------------------------------------------------------------------------------------------
# The na2d dispatcher: backend="flex", "auto", available_backends
# ----------------------------------------------------------------------------------------------------


def test_dispatcher_forcing_flex_where_it_cannot_run_raises():
    q, k, v, rpb = _inputs(9, 13, 3, True)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    with pytest.raises(
        RuntimeError, match=r"^na2d backend 'flex' is unavailable: flex attention has no backward on the CPU$"
    ):
        na2d(*leaves, 3, 2, rpb=rpb, backend="flex")
    with pytest.raises(RuntimeError, match="'flex' is unavailable: .*not torch.float64"), torch.no_grad():
        na2d(q.double(), k.double(), v.double(), 3, 2, backend="flex")


def test_dispatcher_forcing_flex_without_flex_attention_raises(monkeypatch):
    monkeypatch.setattr(na_flex_module, "_flex_module", lambda: None)
    q, k, v, _ = _inputs(9, 13, 3, False)
    with pytest.raises(RuntimeError, match="'flex' is unavailable: torch .* has no .*flex_attention"):
        with torch.no_grad():
            na2d(q, k, v, 3, backend="flex")
    assert "flex" not in available_backends("cpu", grad=False)


def test_dispatcher_auto_stays_torch_on_cpu(monkeypatch):
    calls = []
    monkeypatch.setattr(na_flex_module, "na2d_flex", lambda *a, **kw: calls.append(a))
    q, k, v, rpb = _inputs(9, 13, 3, True)
    with torch.no_grad():  # flex could run here (forward only), but auto keeps the CPU on torch
        out = na2d(q, k, v, 3, 2, rpb=rpb)
    assert calls == []
    torch.testing.assert_close(out, na2d_reference(q, k, v, 3, 2, rpb=rpb), rtol=1e-5, atol=1e-5)


def test_dispatcher_env_var_can_force_flex(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "flex")
    q, k, v, _ = _inputs(9, 13, 3, False)
    with pytest.raises(RuntimeError, match="'flex' is unavailable: flex attention has no backward"):
        na2d(q.requires_grad_(), k, v, 3)


def test_available_backends_lists_flex_forward_only_on_cpu():
    assert available_backends("cpu") == ["torch"]  # forward and backward
    assert available_backends("cpu", grad=False) == ["torch", "flex"]


@pytest.mark.slow
def test_dispatcher_forced_flex_forward_on_cpu_matches_reference(compiled_cpu):
    # same shapes as the compiled_cpu probe (9x13, rpb): reuses its compiled kernel
    for kernel_size, dilation in ((3, 2), (3, 3)):
        q, k, v, rpb = _inputs(9, 13, kernel_size, True, seed=7 + dilation)
        with torch.no_grad():
            out = na2d(q, k, v, kernel_size, dilation, rpb=rpb, backend="flex")
        ref = na2d_reference(q.double(), k.double(), v.double(), kernel_size, dilation, rpb=rpb.double())
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------
# CUDA (fused Triton kernels): half precision and backward with RPB gradients
# ----------------------------------------------------------------------------------------------------


GPU_CASES = [(16, 16, 5, 3), (12, 20, 7, 1), (64, 64, 7, 8), (33, 47, 3, 5)]
# What the CUDA tests check, per q/k/v dtype: every element within atol + rtol * |reference| of the float32
# gather oracle, rtol = atol = these (the RPB gradient, a sum over every query: atol x its largest value).
GPU_FORWARD_TOL = {torch.float32: 1e-4, torch.float16: 3e-2, torch.bfloat16: 3e-2}
GPU_BACKWARD_TOL = {torch.float32: 1e-4, torch.bfloat16: 5e-2}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("height,width,kernel_size,dilation", GPU_CASES)
def test_cuda_forward(dtype, height, width, kernel_size, dilation):
    q, k, v, rpb = _inputs(height, width, kernel_size, True, device="cuda", dim=32)  # flex CUDA: D >= 16
    ref = na2d_reference(q, k, v, kernel_size, dilation, rpb=rpb)
    with torch.no_grad():
        out = na2d_flex(q.to(dtype), k.to(dtype), v.to(dtype), kernel_size, dilation, rpb=rpb.to(dtype))
        plain = na2d_flex(q.to(dtype), k.to(dtype), v.to(dtype), kernel_size, dilation)
    tol = GPU_FORWARD_TOL[dtype]
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol)
    torch.testing.assert_close(
        plain.float(), na2d_reference(q, k, v, kernel_size, dilation), rtol=tol, atol=tol
    )


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("height,width,kernel_size,dilation", GPU_CASES)
def test_cuda_backward_with_rpb(dtype, height, width, kernel_size, dilation):
    q, k, v, rpb = _inputs(height, width, kernel_size, True, device="cuda", dim=32)  # flex CUDA: D >= 16
    grad = torch.randn_like(q)
    leaves = [t.to(dtype).requires_grad_() for t in (q, k, v, rpb)]
    out = na2d_flex(*leaves[:3], kernel_size, dilation, rpb=leaves[3])
    grads = torch.autograd.grad(out, leaves, grad.to(dtype))
    ref_leaves = [t.clone().requires_grad_() for t in (q, k, v, rpb)]
    ref = na2d_reference(*ref_leaves[:3], kernel_size, dilation, rpb=ref_leaves[3])
    ref_grads = torch.autograd.grad(ref, ref_leaves, grad)
    tol = GPU_BACKWARD_TOL[dtype]
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol)
    for name, got, want in zip("qkv", grads[:3], ref_grads[:3]):
        torch.testing.assert_close(got.float(), want, rtol=tol, atol=tol, msg=f"grad {name}")
    # the RPB gradient sums over B * H * W queries: compare relative to its scale
    scale = ref_grads[3].abs().max().item()
    torch.testing.assert_close(grads[3].float(), ref_grads[3], rtol=tol, atol=tol * scale, msg="grad rpb")


def _qkv_views(height, width, heads, dim, dtype, seed=0):
    """q, k, v [B, heads, H, W, D] as strided views of one qkv tensor [B, H, W, 3, heads, D] (the attention
    layer's layout) and that leaf tensor."""
    gen = torch.Generator().manual_seed(seed)
    qkv = torch.randn(B, height, width, 3, heads, dim, generator=gen).to("cuda", dtype).requires_grad_()
    return qkv, qkv.permute(3, 0, 4, 1, 2, 5).unbind(0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rpb_dtype", [None, torch.float32, "same"])
@pytest.mark.parametrize("height,width,kernel_size,dilation", [(64, 64, 7, 8), (33, 47, 3, 5)])
def test_cuda_strided_qkv_forward_and_backward(dtype, rpb_dtype, height, width, kernel_size, dilation):
    # strided q, k, v (views of the layer's qkv tensor) through flex forward and backward; with bf16 q also
    # an fp32 RPB (autocast leaves the parameter in fp32): within GPU_BACKWARD_TOL of the float32 oracle
    qkv, (q, k, v) = _qkv_views(height, width, HEADS, 32, dtype)
    rpb = None
    if rpb_dtype is not None:
        gen = torch.Generator().manual_seed(1)
        span = 2 * kernel_size - 1
        rpb_dtype = dtype if rpb_dtype == "same" else rpb_dtype
        rpb = (0.5 * torch.randn(HEADS, span, span, generator=gen)).to("cuda", rpb_dtype).requires_grad_()
    assert not q.is_contiguous()
    grad = torch.randn(B, HEADS, height, width, 32, generator=torch.Generator().manual_seed(2)).to("cuda")
    out = na2d(q, k, v, kernel_size, dilation, rpb=rpb, backend="flex")
    leaves = [qkv] + ([rpb] if rpb is not None else [])
    grads = torch.autograd.grad(out, leaves, grad.to(dtype))
    ref_leaves = [t.detach().float().requires_grad_() for t in leaves]
    rq, rk, rv = ref_leaves[0].permute(3, 0, 4, 1, 2, 5).unbind(0)
    ref = na2d_reference(rq, rk, rv, kernel_size, dilation, rpb=ref_leaves[1] if rpb is not None else None)
    ref_grads = torch.autograd.grad(ref, ref_leaves, grad)
    tol = GPU_BACKWARD_TOL[dtype]
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol)
    torch.testing.assert_close(grads[0].float(), ref_grads[0], rtol=tol, atol=tol, msg="grad qkv")
    if rpb is not None:
        assert grads[1].dtype == rpb.dtype
        scale = ref_grads[1].abs().max().item()
        torch.testing.assert_close(grads[1].float(), ref_grads[1], rtol=tol, atol=tol * scale, msg="grad rpb")
