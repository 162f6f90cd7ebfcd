"""Inception weights between layouts: NVIDIA's TorchScript / fid-helper (``layers.*``), pytorch-fid's
torchvision-style ``.pth`` (``Mixed_5b.branch1x1.conv.weight`` ...) and ours (the TorchScript names).

Only key names and the batch-norm scale differ: our layers have no BN scale (NVIDIA's graph has none),
so a pytorch-fid scale other than 1 is folded into the convolution weight and the running mean.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from stylenat.metrics.inception import InceptionV3Features


class InceptionWeightsError(ValueError):
    """The Inception weights are missing, corrupt or not the expected file."""


def _our_reference_keys() -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in InceptionV3Features().state_dict().items()}


def from_torchscript_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """NVIDIA TorchScript (``layers.*`` plus ``output.*``) or fid-helper (``net.layers.*``) -> ours."""
    out = {}
    for key, value in sd.items():
        idx = key.find("layers.")
        if idx < 0 or (idx > 0 and not key[:idx].endswith(".")):
            continue  # output.weight / output.bias (logits) and anything else outside the feature net
        out[key[idx:]] = value.detach().to(torch.float32).clone()
    return out


def _pytorch_fid_prefix_map() -> dict[str, str]:
    """Our ConvBN prefix -> pytorch-fid's BasicConv2d prefix (torchvision / FIDInception naming)."""
    block_a = {
        "conv": "branch1x1",
        "tower.conv": "branch5x5_1",
        "tower.conv_1": "branch5x5_2",
        "tower_1.conv": "branch3x3dbl_1",
        "tower_1.conv_1": "branch3x3dbl_2",
        "tower_1.conv_2": "branch3x3dbl_3",
        "tower_2.conv": "branch_pool",
    }
    block_b = {
        "conv": "branch3x3",
        "tower.conv": "branch3x3dbl_1",
        "tower.conv_1": "branch3x3dbl_2",
        "tower.conv_2": "branch3x3dbl_3",
    }
    block_c = {"conv": "branch1x1", "tower_2.conv": "branch_pool"}
    block_c.update({f"tower.conv{s}": f"branch7x7_{i + 1}" for i, s in enumerate(["", "_1", "_2"])})
    block_c.update(
        {f"tower_1.conv{s}": f"branch7x7dbl_{i + 1}" for i, s in enumerate(["", "_1", "_2", "_3", "_4"])}
    )
    block_d = {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2"}
    block_d.update({f"tower_1.conv{s}": f"branch7x7x3_{i + 1}" for i, s in enumerate(["", "_1", "_2", "_3"])})
    block_e = {
        "conv": "branch1x1",
        "tower_conv": "branch3x3_1",
        "tower_mixed_conv": "branch3x3_2a",
        "tower_mixed_conv_1": "branch3x3_2b",
        "tower_1_conv": "branch3x3dbl_1",
        "tower_1_conv_1": "branch3x3dbl_2",
        "tower_1_mixed_conv": "branch3x3dbl_3a",
        "tower_1_mixed_conv_1": "branch3x3dbl_3b",
        "tower_2_conv": "branch_pool",
    }
    out = {
        "layers.conv": "Conv2d_1a_3x3",
        "layers.conv_1": "Conv2d_2a_3x3",
        "layers.conv_2": "Conv2d_2b_3x3",
        "layers.conv_3": "Conv2d_3b_1x1",
        "layers.conv_4": "Conv2d_4a_3x3",
    }
    blocks = [
        ("mixed", "Mixed_5b", block_a),
        ("mixed_1", "Mixed_5c", block_a),
        ("mixed_2", "Mixed_5d", block_a),
        ("mixed_3", "Mixed_6a", block_b),
        ("mixed_4", "Mixed_6b", block_c),
        ("mixed_5", "Mixed_6c", block_c),
        ("mixed_6", "Mixed_6d", block_c),
        ("mixed_7", "Mixed_6e", block_c),
        ("mixed_8", "Mixed_7a", block_d),
        ("mixed_9", "Mixed_7b", block_e),
        ("mixed_10", "Mixed_7c", block_e),
    ]
    for ours, theirs, table in blocks:
        for a, b in table.items():
            out[f"layers.{ours}.{a}"] = f"{theirs}.{b}"
    return out


def to_pytorch_fid_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Ours -> the state_dict of pytorch-fid's ``fid_inception_v3()`` body (without its ``fc`` layer)."""
    out = {}
    for ours, theirs in _pytorch_fid_prefix_map().items():
        beta = sd[f"{ours}.beta"]
        out[f"{theirs}.conv.weight"] = sd[f"{ours}.weight"].clone()
        out[f"{theirs}.bn.weight"] = torch.ones_like(beta)
        out[f"{theirs}.bn.bias"] = beta.clone()
        out[f"{theirs}.bn.running_mean"] = sd[f"{ours}.mean"].clone()
        out[f"{theirs}.bn.running_var"] = sd[f"{ours}.var"].clone()
    return out


def from_pytorch_fid_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """pytorch-fid's ``pt_inception-2015-12-05-*.pth`` -> ours (a BN scale other than 1 is folded in)."""
    out = {}
    for ours, theirs in _pytorch_fid_prefix_map().items():
        try:
            w = sd[f"{theirs}.conv.weight"].double()
            gamma = sd[f"{theirs}.bn.weight"].double()
            beta = sd[f"{theirs}.bn.bias"].double()
            mean = sd[f"{theirs}.bn.running_mean"].double()
            var = sd[f"{theirs}.bn.running_var"].double()
        except KeyError as exc:
            raise InceptionWeightsError(f"not a pytorch-fid Inception state_dict: missing key {exc}") from exc
        if not torch.all(gamma == 1):
            # g * (x - m) / sqrt(v + eps) == (g*x - g*m) / sqrt(v + eps): fold the BN scale into w and m.
            w = w * gamma.view(-1, 1, 1, 1)
            mean = mean * gamma
        out[f"{ours}.weight"] = w.float()
        out[f"{ours}.beta"] = beta.float()
        out[f"{ours}.mean"] = mean.float()
        out[f"{ours}.var"] = var.float()
    return out


def validate_state_dict(sd: Mapping[str, torch.Tensor], origin: str) -> None:
    """Refuse a state_dict that is not exactly our Inception's keys and shapes (the message names one)."""
    ref = _our_reference_keys()
    missing = sorted(set(ref) - set(sd))
    unexpected = sorted(set(sd) - set(ref))
    if missing or unexpected:
        raise InceptionWeightsError(
            f"{origin}: not an Inception-2015-12-05 state_dict "
            f"(missing {len(missing)} keys e.g. {missing[:3]}, unexpected {len(unexpected)} e.g. {unexpected[:3]})"
        )
    for k, shape in ref.items():
        if tuple(sd[k].shape) != shape:
            raise InceptionWeightsError(
                f"{origin}: tensor {k} has shape {tuple(sd[k].shape)}, expected {shape}"
            )
