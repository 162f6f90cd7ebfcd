"""Our generator config, inferred from a reference generator state dict.

Resolution, channels, heads, kernels, MLP ratio and mapping size come from the tensors. Dilations cannot
(NA has no parameters that depend on them): they follow the paper rule unless given. The runtime choices
(NA backend, activation checkpointing) are not part of a model and are left to whoever runs it.
"""

from __future__ import annotations

from stylenat.reference.layout import (
    STAGE_KEY,
    STYLE_KEY,
    na_tables,
    need,
    per_head_kernels,
    shape,
    table_kernel,
)
from stylenat.snapshot import CheckpointError


def paper_dilations(size):
    """The paper's rule: [1] at 4x4 and 8x8, [1, size/8] from 16x16 up."""
    return [1] if size <= 8 else [1, size // 8]


def _stage_count(sd):
    stages = sorted({int(m.group(1)) for k in sd if (m := STAGE_KEY.match(str(k)))})
    if not stages:
        raise CheckpointError("missing key 'layers.0.blocks.0.attn.qkv.weight'")
    if stages != list(range(len(stages))):
        missing = next(s for s in range(len(stages)) if s not in stages)
        raise CheckpointError(f"missing key 'layers.{missing}.blocks.0.attn.qkv.weight'")
    return len(stages)


def _stage_dilations(tables, size, dilations, s):
    if dilations is not None:
        return list(dilations[s])
    if len(tables) == 2 and size >= 16 or len(tables) == 1 and size <= 8:
        return paper_dilations(size)
    if len(tables) == 2 and size <= 8:  # the legacy layout's two halves, both at dilation 1
        return [1]
    raise CheckpointError(
        f"stage {size}x{size} has {len(tables)} attention groups, which the paper's dilation rule does not "
        f"cover; give the dilations explicitly (e.g. --dilations)"
    )


def infer_reference_config(g_state_dict, dilations=None) -> dict:
    """Our GeneratorConfig (as a dict) for a reference generator state dict.

    Dilations follow the paper rule ([1] at 4x4 and 8x8, [1, res/8] from 16x16 up) unless `dilations`
    (one list per stage, 4x4 first) overrides them.
    """
    sd = g_state_dict
    n_mlp = len([k for k in sd if STYLE_KEY.match(str(k))])
    if n_mlp == 0:
        raise CheckpointError("missing key 'style.1.weight'")
    w0 = need(sd, "style.1.weight")
    w_last = need(sd, f"style.{n_mlp}.weight")
    z_dim, w_dim = int(w0.shape[1]), int(w_last.shape[0])
    n = _stage_count(sd)
    resolution = 4 * 2 ** (n - 1)
    if dilations is not None:
        dilations = [[d] if isinstance(d, int) else [int(x) for x in d] for d in dilations]
        if len(dilations) < n:
            raise CheckpointError(
                f"dilations needs {n} stage entries (4x4 first) for resolution {resolution}, got {dilations}"
            )
        dilations = dilations[:n]

    channels, heads, mlp_ratios, kernels, dils = [], [], [], [], []
    for s in range(n):
        size = 4 * 2**s
        prefix = f"layers.{s}.blocks.0."
        qkv = need(sd, f"{prefix}attn.qkv.weight")
        if qkv.ndim != 2:
            raise CheckpointError(
                f"key {prefix + 'attn.qkv.weight'!r} has shape {shape(qkv)} but expected [3C, C]"
            )
        c = int(qkv.shape[1])
        channels.append(c)
        fc1 = need(sd, f"{prefix}mlp.fc1.weight")
        mlp_ratios.append(fc1.shape[0] / c)
        if s == 0:
            rpb = need(sd, f"{prefix}attn.rpb")
            heads.append(int(rpb.shape[0]))
            kernels.append([3])  # unused by the 4x4 MHSA stage; the paper config's value
            dils.append(list(dilations[0]) if dilations is not None else [1])
            continue
        _, tables = na_tables(sd, f"{prefix}attn.")
        per_head = per_head_kernels(tables)
        if c % len(per_head):
            shapes = ", ".join(f"{k!r} {shape(t)}" for k, t in tables)
            raise CheckpointError(
                f"bias tables {shapes} hold {len(per_head)} heads, which do not divide {c} channels"
            )
        heads.append(len(per_head))
        group_kernels = [table_kernel(k, t) for k, t in tables]
        d = _stage_dilations(tables, size, dilations, s)
        if len(set(group_kernels)) == 1:
            k = [group_kernels[0]]
        elif len(d) in (1, len(group_kernels)):
            k = group_kernels
        else:
            raise CheckpointError(
                f"stage {size}x{size}: {len(group_kernels)} attention groups with kernels {group_kernels} "
                f"do not fit dilations {d}"
            )
        kernels.append(k)
        dils.append(d)
    ratio = mlp_ratios[0]
    if any(abs(r - ratio) > 1e-9 for r in mlp_ratios):
        raise CheckpointError(f"inconsistent MLP widths across stages (ratios {mlp_ratios})")
    head_channels, min_heads = _infer_head_rule(channels, heads)

    from stylenat.models.generator import paper_channels

    cm = next((m for m in (2, 1, 4) if paper_channels(resolution, m) == channels), None)
    return {
        "resolution": resolution,
        "z_dim": z_dim,
        "w_dim": w_dim,
        "n_mlp": n_mlp,
        "lr_mlp": 0.01,
        "channel_multiplier": cm if cm is not None else 2,
        "channels": None if cm is not None else channels,
        "min_heads": min_heads,
        "head_channels": head_channels,
        "mlp_ratio": float(ratio),
        "kernels": kernels,
        "dilations": dils,
        "use_rpb": True,
        "output_normalization": "imagenet",
    }


def _infer_head_rule(channels, heads):
    """(head_channels, min_heads) with heads == max(C // head_channels, min_heads) at every stage."""
    candidates_hc = [32] + sorted({c // h for c, h in zip(channels, heads) if h} - {32})
    candidates_mh = [4] + sorted(set(heads) - {4}) + [1]
    for hc in candidates_hc:
        for mh in candidates_mh:
            if hc > 0 and all(max(c // hc, mh) == h for c, h in zip(channels, heads)):
                return hc, mh
    raise CheckpointError(
        f"cannot express the heads per stage {heads} for channels {channels} as max(C // d, m)"
    )
