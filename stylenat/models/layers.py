"""Small building blocks shared by the generator and the discriminators."""

import math

import torch
import torch.nn.functional as F
from torch import nn

SQRT2 = math.sqrt(2.0)


def fused_leaky_relu(x, bias=None, negative_slope=0.2, scale=SQRT2):
    """StyleGAN's bias + leaky ReLU * sqrt(2); the bias broadcasts over dim 1 for NCHW, the last dim otherwise."""
    if bias is not None:
        shape = [1] * x.ndim
        channel_dim = 1 if x.ndim == 4 else x.ndim - 1
        shape[channel_dim] = -1
        x = x + bias.view(shape)
    return F.leaky_relu(x, negative_slope) * scale


class EqualLinear(nn.Module):
    """Linear layer with equalized learning rate: weights stored at unit scale, rescaled at run time.

    `lr_mul` slows this layer's effective learning rate (0.01 in the mapping network) without a
    separate optimizer group.
    """

    def __init__(self, in_dim, out_dim, bias=True, bias_init=0.0, lr_mul=1.0, activation=None):
        super().__init__()
        if activation not in (None, "fused_lrelu"):
            raise ValueError(f"unknown activation {activation!r}; expected None or 'fused_lrelu'")
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init))) if bias else None
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x):
        bias = self.bias * self.lr_mul if self.bias is not None else None
        if self.activation == "fused_lrelu":
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), bias)
        return F.linear(x, self.weight * self.scale, bias)

    def extra_repr(self):
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}, lr_mul={self.lr_mul}, activation={self.activation}"


class PixelNorm(nn.Module):
    """x / RMS(x) over the channels (dim 1): the mapping network's input normalisation."""

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class AdaptiveInstanceNorm(nn.Module):
    """Instance norm over the tokens of a [B, H, W, C] map, then a per-sample affine predicted from w."""

    def __init__(self, channels, w_dim, eps=1e-5):
        super().__init__()
        self.affine = EqualLinear(w_dim, 2 * channels)
        self.eps = eps

    def forward(self, x, w):
        mean = x.mean(dim=(1, 2), keepdim=True)
        centred = x - mean
        var = centred.square().mean(dim=(1, 2), keepdim=True)
        gamma, beta = self.affine(w).chunk(2, dim=-1)
        scale = gamma[:, None, None, :] * torch.rsqrt(var + self.eps)
        return torch.addcmul(beta[:, None, None, :], centred, scale)


class Mlp(nn.Module):
    """Linear(C, hidden) - GELU - Linear(hidden, C), on channels-last tokens."""

    def __init__(self, channels, hidden):
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


def sinusoidal_table(num_positions, dim):
    """fairseq/SPE table used by StyleSwin: row p = [sin(p f), cos(p f)], f_i = 10000^(-i/(dim/2-1)); row 0 = 0."""
    half = dim // 2
    if half < 2:
        raise ValueError(f"sinusoidal encoding needs at least 4 channels per axis, got {dim}")
    freq = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    angles = torch.arange(num_positions, dtype=torch.float32)[:, None] * freq[None, :]
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    table[0] = 0
    return table


def sinusoidal_grid_2d(height, width, channels):
    """2-D encoding [H, W, C]: the first C/2 channels encode x (column), the rest y (row); positions start at 1."""
    if channels % 4:
        raise ValueError(f"2-D sinusoidal encoding needs channels divisible by 4, got {channels}")
    dim = channels // 2
    x_emb = sinusoidal_table(width + 1, dim)[1:]  # [W, dim]
    y_emb = sinusoidal_table(height + 1, dim)[1:]  # [H, dim]
    return torch.cat(
        [x_emb[None, :, :].expand(height, width, dim), y_emb[:, None, :].expand(height, width, dim)], dim=-1
    )


class EqualConv2d(nn.Module):
    """Conv2d with equalized learning rate (rosinality layout: `weight` at unit scale, optional `bias`).

    Used by the discriminators when spectral norm is off.
    """

    def __init__(self, in_channel, out_channel, kernel_size, stride=1, padding=0, bias=True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channel, in_channel, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channel)) if bias else None
        self.scale = 1 / math.sqrt(in_channel * kernel_size**2)
        self.stride = stride
        self.padding = padding

    def forward(self, x):
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)

    def extra_repr(self):
        o, i, k, _ = self.weight.shape
        return f"{i}, {o}, {k}, stride={self.stride}, padding={self.padding}, bias={self.bias is not None}"
