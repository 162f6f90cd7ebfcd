"""Discriminator key mapping: the reference wavelet D (spectral norm on) -> ours.

Our `WaveletDiscriminator` mirrors the reference module names, so tensors keep their keys (`...weight_orig`,
`weight_u`, `weight_v` from torch's spectral_norm, FusedLeakyReLU `bias`); what needs care is the channel
table (read from the tensors, so small or non-paper discriminators convert too) and the constant buffers.
"""

from __future__ import annotations

import math

import torch

from stylenat.reference.layout import as_float_copy, shape
from stylenat.snapshot import CheckpointError


def _channels_from_tensors(sd, resolution):
    """{resolution: channels} for the levels whose weights are present."""
    channels, log_size = {}, int(round(math.log2(resolution))) - 1
    if "from_rgbs.0.conv.0.weight_orig" in sd:
        channels[resolution] = int(sd["from_rgbs.0.conv.0.weight_orig"].shape[0])
    for n in range(log_size - 2):
        key = f"convs.{n}.conv2.1.weight_orig"
        if key in sd:
            channels[2 ** (log_size - n - 1)] = int(sd[key].shape[0])
    return channels


def convert_discriminator_state(d_state_dict, resolution, channel_multiplier=2):
    """Reference wavelet-D state dict -> (our state dict, our D config).

    Every key and shape is checked, and the constant buffers (Haar filters, blur kernels) must equal ours.
    """
    from stylenat.models.build import build_discriminator
    from stylenat.models.discriminator import channel_table

    d_cfg = {"name": "wavelet", "channel_multiplier": int(channel_multiplier), "sn": True}
    sd = d_state_dict
    channels = _channels_from_tensors(sd, resolution)
    default = channel_table(resolution, channel_multiplier)
    if any(default.get(k) != v for k, v in channels.items()):
        d_cfg["channels"] = channels
    try:
        D = build_discriminator(d_cfg, resolution)
    except ValueError as err:
        raise CheckpointError(f"cannot build the discriminator for resolution {resolution}: {err}") from None
    ours = D.state_dict()
    buffers = {name for name, _ in D.named_buffers()}
    missing = [k for k in ours if k not in sd]
    if missing:
        raise CheckpointError(f"discriminator: missing key {missing[0]!r} ({len(missing)} missing in all)")
    unexpected = [k for k in sd if k not in ours]
    if unexpected:
        raise CheckpointError(
            f"discriminator: unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected in all)"
        )
    out = {}
    for k, v in ours.items():
        t = sd[k]
        if shape(t) != shape(v):
            raise CheckpointError(f"discriminator: key {k!r} has shape {shape(t)} but expected {shape(v)}")
        if k in buffers and not k.endswith(("weight_u", "weight_v")):
            if not torch.allclose(t.float(), v.float(), rtol=0, atol=1e-6):
                raise CheckpointError(f"discriminator: constant buffer {k!r} differs from ours")
        out[k] = as_float_copy(t)
    return out, d_cfg
