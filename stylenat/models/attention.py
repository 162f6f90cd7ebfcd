"""Attention layers of the StyleNAT generator: full MHSA with RPB (4x4) and Hydra neighborhood attention."""

import torch
import torch.nn.functional as F
from torch import nn

from stylenat.ops.checks import is_odd_kernel
from stylenat.ops.na import NA_BACKENDS, na2d


def split_heads(num_heads, num_groups):
    """Heads per group: equal shares, the last groups taking one extra head when the split is uneven."""
    base, extra = divmod(num_heads, num_groups)
    if base == 0:
        raise ValueError(f"cannot split {num_heads} heads into {num_groups} groups")
    return [base + (1 if g >= num_groups - extra else 0) for g in range(num_groups)]


def broadcast_groups(kernels, dilations):
    """Pair kernels with dilations the way the reference config does: a single value repeats."""
    kernels, dilations = list(kernels), list(dilations)
    if len(kernels) == 1 and len(dilations) > 1:
        kernels = kernels * len(dilations)
    if len(dilations) == 1 and len(kernels) > 1:
        dilations = dilations * len(kernels)
    if len(kernels) != len(dilations):
        raise ValueError(f"got {len(kernels)} kernels {kernels} but {len(dilations)} dilations {dilations}")
    return kernels, dilations


class HydraNeighborhoodAttention(nn.Module):
    """Heads split into groups, each group with its own kernel size and dilation (the paper's Hydra-NA).

    qkv = Linear(C, 3C) laid out (3, heads, head_dim); per group neighborhood attention with that group's
    RPB table; outputs concatenated in head order (group 0 first, as in the reference checkpoints); then
    proj = Linear(C, C). ``backend`` picks the na2d implementation (with RPB off NATTEN's fused CUDA
    kernels can run).
    """

    def __init__(self, dim, num_heads, kernels, dilations, use_rpb=True, backend="auto"):
        super().__init__()
        kernels, dilations = broadcast_groups(kernels, dilations)
        for k in kernels:
            if not is_odd_kernel(k):
                raise ValueError(f"neighborhood attention kernel sizes must be odd, got {k}")
        if dim % num_heads:
            raise ValueError(f"channels {dim} are not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.kernels = kernels
        self.dilations = dilations
        self.group_heads = split_heads(num_heads, len(kernels))
        self.backend = check_backend(backend)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rpb = (
            nn.ParameterList(
                nn.Parameter(torch.zeros(h, 2 * k - 1, 2 * k - 1)) for h, k in zip(self.group_heads, kernels)
            )
            if use_rpb
            else None
        )
        if self.rpb is not None:
            for table in self.rpb:
                nn.init.trunc_normal_(table, std=0.02, a=-2.0, b=2.0)

    def forward(self, x):
        return self.proj(self.attend(self.qkv(x)))

    def attend(self, qkv, out=None):
        """Everything between the projections: qkv [B, H, W, 3C] -> heads [B, H, W, C] in head order.

        Without autograd (and outside torch.compile) every group writes into one token-major buffer
        [B, H, W, heads, head_dim], the layout the output projection reads: no concatenation, no permuting
        copy. ``out`` supplies that buffer (the CPU inference path passes a pooled one)."""
        B, H, W, _ = qkv.shape
        q, k, v = qkv.view(B, H, W, 3, self.num_heads, self.head_dim).permute(3, 0, 4, 1, 2, 5).unbind(0)
        grad = torch.is_grad_enabled() and (
            qkv.requires_grad or any(p.requires_grad for p in self.parameters())
        )
        if out is None and not grad and not torch.compiler.is_compiling():
            out = qkv.new_empty(B, H, W, self.num_heads, self.head_dim)
        outputs, start = [], 0
        for g, (heads, kernel, dilation) in enumerate(zip(self.group_heads, self.kernels, self.dilations)):
            sl = slice(start, start + heads)
            rpb = self.rpb[g] if self.rpb is not None else None
            target = None if out is None else out[:, :, :, sl].permute(0, 3, 1, 2, 4)
            y = na2d(
                q[:, sl], k[:, sl], v[:, sl], kernel, dilation, rpb=rpb, backend=self.backend, out=target
            )
            outputs.append(y.permute(0, 2, 3, 1, 4))  # [B, H, W, heads_g, D]: a view for the torch op
            start += heads
        if out is not None:
            return out.view(B, H, W, -1)
        return (outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=3)).reshape(B, H, W, -1)


def check_backend(name):
    """``name`` if it is a neighborhood attention backend, else ValueError."""
    if name not in NA_BACKENDS:
        raise ValueError(f"na_backend={name!r}: expected one of {', '.join(NA_BACKENDS)}")
    return name


def relative_position_index(size):
    """[N, N] index into a flattened (2s-1)x(2s-1) table: (key - query) + (s - 1) per axis, row-major."""
    coords = torch.stack(torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")).flatten(1)
    rel = coords[:, None, :] - coords[:, :, None] + (size - 1)  # [2, Nq, Nk]: key - query
    return rel[0] * (2 * size - 1) + rel[1]


class MultiHeadSelfAttentionRPB(nn.Module):
    """Global self-attention over a small square map with a learned relative position bias (the 4x4 stage)."""

    def __init__(self, dim, num_heads, size):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"channels {dim} are not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.size = size
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * size - 1, 2 * size - 1))
        nn.init.trunc_normal_(self.rpb, std=0.02)
        self.register_buffer("rp_index", relative_position_index(size), persistent=False)

    def forward(self, x):
        B, H, W, C = x.shape
        N = H * W
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = self.rpb.flatten(1)[:, self.rp_index].to(q.dtype)  # [heads, N, N]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(0))
        return self.proj(out.transpose(1, 2).reshape(B, H, W, C))
