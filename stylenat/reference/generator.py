"""Generator key mapping between the reference names and ours, both directions:

    reference                                          ours
    style.{i+1}.weight/bias  (index 0 is PixelNorm)    mapping_net.layers.{i}.weight/bias
    input.input              [1, C, 4, 4]              const [1, 4, 4, C] (channels-last)
    layers.{s}.blocks.{j}.norm{1,2}.style.*            stages.{s}.blocks.{j}.norm{1,2}.affine.*
    layers.{s}.blocks.{j}.attn.qkv/proj.*              stages.{s}.blocks.{j}.attn.qkv/proj.*
    layers.0.blocks.{j}.attn.rpb + relative_position_index     stages.0.blocks.{j}.attn.rpb
    layers.{s}.blocks.{j}.attn.rpb0, rpb1  (legacy split-head) stages.{s}.blocks.{j}.attn.rpb.{g}
    layers.{s}.blocks.{j}.attn.rpb.{i}     (Hydra-NA)          stages.{s}.blocks.{j}.attn.rpb.{g}
    layers.{s}.blocks.{j}.mlp.fc1/fc2.*                stages.{s}.blocks.{j}.mlp.fc1/fc2.*
    layers.{s}.upsample.norm.*, .reduction.weight, .alpha      stages.{s}.upsample.norm.*, .proj.weight, .alpha
    to_rgbs.{s}.conv.*, to_rgbs.{s}.bias [1, 3, 1, 1]  to_rgbs.{s}.conv.*, to_rgbs.{s}.bias [3]
    (no w_avg)                                         w_avg: mean of the mapping of seeded z's

Both sides lay qkv rows out as (3, heads, head_dim) and order heads group 0 first, so those tensors copy
as they are. RPB tables are regrouped per head: the legacy split-head layer always has two halves
(`rpb0`, `rpb1`), also at 8x8 where both halves use dilation 1 and our config has one group.
The 4x4 MHSA table is re-indexed through the checkpoint's own `relative_position_index` buffer, so the
bias every (query, key) pair receives is preserved whatever orientation that buffer has.

The reference constant buffers (`relative_position_index`, the ToRGB blur `upsample.kernel`,
`sin_pos_embed._float_tensor`) are checked where present and dropped: ours are rebuilt from the config.
"""

from __future__ import annotations

import torch

from stylenat.models.attention import broadcast_groups, relative_position_index, split_heads
from stylenat.models.generator import Generator, GeneratorConfig
from stylenat.ops.upfirdn import make_kernel
from stylenat.reference.layout import (
    as_float_copy,
    na_tables,
    need,
    per_head_kernels,
    reference_relative_position_index,
    shape,
    table_kernel,
)
from stylenat.snapshot import CheckpointError

LAYOUTS = ("legacy", "new")


def _plain_pairs(n_mlp, n_stages):
    """(our key, reference key, kind) for every tensor that is a rename (kind: None, 'const', 'rgb_bias')."""
    pairs = []
    for i in range(n_mlp):
        for p in ("weight", "bias"):
            pairs.append((f"mapping_net.layers.{i}.{p}", f"style.{i + 1}.{p}", None))
    pairs.append(("const", "input.input", "const"))
    for s in range(n_stages):
        for j in range(2):
            ours, ref = f"stages.{s}.blocks.{j}.", f"layers.{s}.blocks.{j}."
            for p in ("weight", "bias"):
                for norm in ("norm1", "norm2"):
                    pairs.append((f"{ours}{norm}.affine.{p}", f"{ref}{norm}.style.{p}", None))
                for lin in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
                    pairs.append((f"{ours}{lin}.{p}", f"{ref}{lin}.{p}", None))
        if s < n_stages - 1:
            ours, ref = f"stages.{s}.upsample.", f"layers.{s}.upsample."
            pairs += [
                (f"{ours}norm.weight", f"{ref}norm.weight", None),
                (f"{ours}norm.bias", f"{ref}norm.bias", None),
                (f"{ours}proj.weight", f"{ref}reduction.weight", None),
                (f"{ours}alpha", f"{ref}alpha", None),
            ]
        for p in ("weight", "bias"):
            pairs.append((f"to_rgbs.{s}.conv.{p}", f"to_rgbs.{s}.conv.{p}", None))
        pairs.append((f"to_rgbs.{s}.bias", f"to_rgbs.{s}.bias", "rgb_bias"))
    return pairs


def _to_ours(t, kind):
    if kind == "const":
        return t.permute(0, 2, 3, 1)
    if kind == "rgb_bias":
        return t.reshape(-1)
    return t


def _to_ref(t, kind):
    if kind == "const":
        return t.permute(0, 3, 1, 2)
    if kind == "rgb_bias":
        return t.reshape(1, -1, 1, 1)
    return t


def _ref_shape(our_shape, kind):
    if kind == "const":
        return [our_shape[0], our_shape[3], our_shape[1], our_shape[2]]
    if kind == "rgb_bias":
        return [1, our_shape[0], 1, 1]
    return list(our_shape)


def _remap_table(table, src_index, dst_index, key):
    """Re-index an RPB table [heads, T, T] so that dst_index picks what src_index picked, pair by pair."""
    heads, side = table.shape[0], table.shape[-1]
    flat = table.reshape(heads, side * side)
    src_of = torch.full((side * side,), -1, dtype=torch.long)
    dst, src = dst_index.reshape(-1).long(), src_index.reshape(-1).long()
    if src.min() < 0 or src.max() >= side * side:
        raise CheckpointError(f"{key}: index values outside the {side}x{side} bias table")
    src_of[dst] = src
    if not torch.equal(src_of[dst], src) or (src_of < 0).any():
        raise CheckpointError(
            f"{key}: the relative position index does not describe a relative-offset bias this generator can represent"
        )
    return flat[:, src_of].reshape(heads, side, side)


def _blur_kernel():
    return make_kernel([1, 3, 3, 1]) * 4


def group_structure(heads, kernels, dilations):
    """Our per-head (kernel, dilation) list and group head counts for one NA stage."""
    ks, ds = broadcast_groups(kernels, dilations)
    counts = split_heads(heads, len(ks))
    per_head = []
    for n, k, d in zip(counts, ks, ds):
        per_head += [(k, d)] * n
    return counts, per_head


def _meta_generator(cfg):
    """Our generator for `cfg` on the meta device: its state dict gives every expected key and shape."""
    try:
        config = GeneratorConfig.from_dict(cfg)
        with torch.device("meta"):
            return Generator(config)
    except ValueError as err:
        raise CheckpointError(f"the inferred generator config is invalid: {err}") from None


def _mhsa_table(sd, prefix, size, want, info, used):
    """The 4x4 MHSA bias table under our index, re-indexed through the file's own buffer where it has one."""
    key = f"{prefix}rpb"
    t = need(sd, key)
    if shape(t) != want:
        raise CheckpointError(f"key {key!r} has shape {shape(t)} but expected {want}")
    ours_index = relative_position_index(size)
    idx_key = f"{prefix}relative_position_index"
    if idx_key in sd:
        ref_index = sd[idx_key]
        used.add(idx_key)
        if shape(ref_index) != shape(ours_index):
            raise CheckpointError(
                f"key {idx_key!r} has shape {shape(ref_index)} but expected {shape(ours_index)}"
            )
        info["rp_index"].add(
            "reference (flipped)" if torch.equal(ref_index.long(), ours_index) else "other (re-indexed)"
        )
    else:
        ref_index = reference_relative_position_index(size)
        info["rp_index"].add("absent (reference assumed)")
    used.add(key)
    return as_float_copy(_remap_table(t, ref_index, ours_index, idx_key))


def _na_group_tables(sd, prefix, size, heads, kernels, dilations, info, used):
    """The NA bias tables of one block regrouped as ours (one table per group), checked against the config."""
    layout, tables = na_tables(sd, prefix)
    info["attention_layout"].add(layout)
    for key, t in tables:
        table_kernel(key, t)
        used.add(key)
    ref_kernels = per_head_kernels(tables)
    counts, per_head = group_structure(heads, kernels, dilations)
    our_kernels = [k for k, _ in per_head]
    start = 0
    for key, t in tables:  # name the first table whose shape the config does not expect
        span = set(our_kernels[start : start + t.shape[0]])
        start += t.shape[0]
        if len(span) == 1 and start <= len(our_kernels):
            k = span.pop()
            want = [t.shape[0], 2 * k - 1, 2 * k - 1]
            if shape(t) != want:
                raise CheckpointError(f"key {key!r} has shape {shape(t)} but expected {want}")
    if ref_kernels != our_kernels:
        raise CheckpointError(
            f"{prefix}rpb: stage {size}x{size} has per-head kernel sizes {ref_kernels} in the checkpoint "
            f"but {our_kernels} in the config"
        )
    per_head_tables = [row for _, t in tables for row in t.unbind(0)]
    groups, start = [], 0
    for count in counts:
        groups.append(as_float_copy(torch.stack(per_head_tables[start : start + count])))
        start += count
    return groups


def _check_constant_buffers(sd, s, blur, used):
    """The upsample's positional-encoding placeholder and the ToRGB blur kernel: checked, then dropped."""
    key = f"layers.{s}.upsample.sin_pos_embed._float_tensor"
    if key in sd:
        used.add(key)
    key = f"to_rgbs.{s}.upsample.kernel"
    if key in sd:
        used.add(key)
        k = sd[key]
        if shape(k) != shape(blur) or not torch.allclose(k.float(), blur, rtol=0, atol=1e-6):
            raise CheckpointError(f"key {key!r} is not the [1, 3, 3, 1] blur kernel this generator uses")


def convert_generator_state(sd, cfg):
    """Reference generator state dict -> (our state dict without w_avg, info dict). Checks every key and shape."""
    G = _meta_generator(cfg)
    ours_expected = dict(G.state_dict())
    n = G.cfg.num_stages
    out, used, info = {}, set(), {"attention_layout": set(), "rp_index": set()}
    for ours, ref, kind in _plain_pairs(G.cfg.n_mlp, n):
        t = need(sd, ref)
        want = _ref_shape(shape(ours_expected[ours]), kind)
        if shape(t) != want:
            raise CheckpointError(f"key {ref!r} has shape {shape(t)} but expected {want}")
        out[ours] = as_float_copy(_to_ours(t, kind))
        used.add(ref)

    blur = _blur_kernel()
    for s in range(n):
        stage = G.stages[s]
        for j in range(2):
            prefix, attn = f"layers.{s}.blocks.{j}.attn.", stage.blocks[j].attn
            if s == 0:
                out[f"stages.0.blocks.{j}.attn.rpb"] = _mhsa_table(
                    sd, prefix, stage.size, shape(attn.rpb), info, used
                )
                continue
            groups = _na_group_tables(
                sd, prefix, stage.size, attn.num_heads, G.cfg.kernels[s], G.cfg.dilations[s], info, used
            )
            for g, table in enumerate(groups):
                out[f"stages.{s}.blocks.{j}.attn.rpb.{g}"] = table
        if s < n - 1:
            _check_constant_buffers(sd, s, blur, used)
    unexpected = [k for k in sd if k not in used]
    if unexpected:
        raise CheckpointError(f"unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected in all)")
    missing = [k for k in ours_expected if k not in out and k != "w_avg"]
    if missing:  # a bug guard: every key of our generator must have a source
        raise CheckpointError(f"no source for our key {missing[0]!r}")
    for k, v in out.items():
        if shape(v) != shape(ours_expected[k]):
            raise CheckpointError(
                f"converted key {k!r} has shape {shape(v)} but expected {shape(ours_expected[k])}"
            )
    layouts = info["attention_layout"]
    info["attention_layout"] = layouts.pop() if len(layouts) == 1 else ("mixed" if layouts else "none")
    info["rp_index"] = sorted(info["rp_index"])
    return out, info


# ------------------------------------------------------------------------------------------- inverse
def _legacy_split_ok(cfg_kernels, cfg_dilations):
    """The reference NATLayer builds the legacy split-head layer when it has at most two kernels/dilations."""
    return len(cfg_kernels) <= 2 and len(cfg_dilations) <= 2


def snapshot_to_reference(snapshot, layout="legacy") -> dict:
    """Our snapshot (dict with model_config, state_dict) -> a reference generator state dict.

    layout "legacy": what the reference NATLayer builds, i.e. the split-head layer (`rpb0`, `rpb1`, two
    equal halves) wherever a stage has at most two kernels/dilations, Hydra (`rpb.{i}`) elsewhere.
    layout "new": Hydra (`rpb.{i}`, one table per group) everywhere. w_avg has no reference counterpart.
    Constant buffers are written as the reference registers them.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    cfg = GeneratorConfig.from_dict(snapshot["model_config"])
    sd = snapshot["state_dict"]
    n = cfg.num_stages
    out = {}
    for ours, ref, kind in _plain_pairs(cfg.n_mlp, n):
        out[ref] = as_float_copy(_to_ref(sd[ours], kind))
    for s in range(n):
        size = 4 * 2**s
        for j in range(2):
            prefix = f"layers.{s}.blocks.{j}.attn."
            if s == 0:
                ours_index = relative_position_index(size)
                ref_index = reference_relative_position_index(size)
                out[f"{prefix}rpb"] = as_float_copy(
                    _remap_table(sd[f"stages.0.blocks.{j}.attn.rpb"], ours_index, ref_index, prefix)
                )
                out[f"{prefix}relative_position_index"] = ref_index
                continue
            tables, g = [], 0
            while f"stages.{s}.blocks.{j}.attn.rpb.{g}" in sd:
                tables.append(sd[f"stages.{s}.blocks.{j}.attn.rpb.{g}"])
                g += 1
            heads = sum(t.shape[0] for t in tables)
            if layout == "legacy" and _legacy_split_ok(cfg.kernels[s], cfg.dilations[s]):
                _, per_head = group_structure(heads, cfg.kernels[s], cfg.dilations[s])
                half = heads // 2
                if heads % 2 or len(set(per_head[:half])) != 1 or len(set(per_head[half:])) != 1:
                    raise ValueError(
                        f"stage {size}x{size}: heads {per_head} cannot be written as the legacy layer's two equal halves"
                    )
                rows = [row for t in tables for row in t.unbind(0)]
                out[f"{prefix}rpb0"] = as_float_copy(torch.stack(rows[:half]))
                out[f"{prefix}rpb1"] = as_float_copy(torch.stack(rows[half:]))
            else:
                for g, t in enumerate(tables):
                    out[f"{prefix}rpb.{g}"] = as_float_copy(t)
        if s < n - 1:
            out[f"layers.{s}.upsample.sin_pos_embed._float_tensor"] = torch.zeros(1)
            out[f"to_rgbs.{s}.upsample.kernel"] = _blur_kernel()
    return dict(sorted(out.items(), key=lambda kv: _reference_order(kv[0])))


def _reference_order(key):
    """Sort key approximating the reference module registration order (style, input, layers, to_rgbs)."""
    parts = key.split(".")
    head = {"style": 0, "input": 1, "layers": 2, "to_rgbs": 3}.get(parts[0], 4)
    nums = [int(p) for p in parts[1:3] if p.isdigit()]
    return (head, nums, key)
