"""Official StyleNAT checkpoints (github.com/SHI-Labs/StyleNAT) <-> our inference snapshots.

The reference code saves plain dicts of state dicts: legacy files (the released `FFHQ256_940k_flip.pt`,
`FFHQ1024_700k.pt`) hold `g`, `d`, `g_ema` at the top level; newer training saves them under
`state_dicts` next to `optim_dicts` and `args`. Its generator names differ from ours:

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

import argparse
import hashlib
import math
import re
from pathlib import Path

import torch

from stylenat.snapshot import SNAPSHOT_FORMAT, SNAPSHOT_VERSION, CheckpointError, read_checkpoint

CONVERSION_VERSION = 1
LAYOUTS = ("legacy", "new")

# Python objects (besides tensors and builtins) that reference checkpoints may carry under `args`;
# allowlisted for torch.load(weights_only=True) through torch.serialization.safe_globals.
SAFE_REFERENCE_GLOBALS = {"argparse.Namespace": argparse.Namespace}

_STAGE_KEY = re.compile(r"^layers\.(\d+)\.")
_STYLE_KEY = re.compile(r"^style\.(\d+)\.weight$")


# --------------------------------------------------------------------------------------------- reading
def read_reference_checkpoint(path):
    """torch.load a reference file safely: weights_only=True, allowing only `argparse.Namespace` extra.

    Old StyleSwin-style training scripts pickled their argparse Namespace under `args`, which plain
    weights_only loading refuses; it is allowlisted through `torch.serialization.safe_globals` (still the
    restricted unpickler). Anything else foreign is refused with a one-line way forward.
    """
    try:
        return read_checkpoint(path)
    except CheckpointError as err:
        first = err
    try:
        with torch.serialization.safe_globals(list(SAFE_REFERENCE_GLOBALS.values())):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        retry = str(err)
    try:  # name the refused globals (zip checkpoints), else take them from the unpickler's message
        names = [str(n) for n in torch.serialization.get_unsafe_globals_in_checkpoint(str(path))]
    except Exception:
        names = re.findall(r"GLOBAL ([\w.]+)", retry)
    unsupported = sorted({n for n in names if n not in SAFE_REFERENCE_GLOBALS})
    if not unsupported:  # truncated, corrupt or not a torch file: the first message says it best
        raise first
    raise CheckpointError(
        f"{path} pickles Python objects that safe loading refuses ({', '.join(unsupported[:4])}); "
        f'if you trust the file, re-save just its tensors: python -c "import torch; '
        f"c = torch.load('{path}', weights_only=False); c = c.get('state_dicts', c); "
        f"torch.save({{k: c[k] for k in ('g', 'g_ema', 'd') if k in c}}, 'clean.pt')\" and convert clean.pt"
    )


def _strip_module_prefix(sd):
    """State dicts saved from a DistributedDataParallel wrapper carry a `module.` prefix on every key."""
    if isinstance(sd, dict) and sd and all(str(k).startswith("module.") for k in sd):
        return {str(k)[len("module.") :]: v for k, v in sd.items()}
    return sd


def _looks_like_reference_g(sd):
    sd = _strip_module_prefix(sd)
    return (
        isinstance(sd, dict)
        and "input.input" in sd
        and "layers.0.blocks.0.attn.qkv.weight" in sd
        and any(_STYLE_KEY.match(str(k)) for k in sd)
    )


def _foreign_hint(obj):
    """A short guess at what a non-StyleNAT dict is (rosinality StyleGAN2 and StyleSwin share the containers)."""
    container = obj.get("state_dicts", obj)
    g = container.get("g_ema", container.get("g")) if isinstance(container, dict) else None
    if not isinstance(g, dict):
        g = obj
    if "conv1.conv.weight" in g:
        return "; it looks like a StyleGAN2 (rosinality) generator"
    if "layers.0.blocks.0.qkv.weight" in g:
        return "; it looks like a StyleSwin generator"
    if "G_ema" in obj or "model_config" in obj:
        return "; it looks like a stylenat training state, not a reference file"
    return ""


def is_reference_checkpoint(obj) -> bool:
    """True for a reference StyleNAT training file (legacy or new container) or a bare reference G state dict."""
    if not isinstance(obj, dict):
        return False
    container = obj.get("state_dicts", obj)
    if isinstance(container, dict) and any(k in container for k in ("g_ema", "g")):
        return any(_looks_like_reference_g(container.get(k)) for k in ("g_ema", "g"))
    return _looks_like_reference_g(obj)


def _describe(obj):
    if isinstance(obj, dict):
        return f"top-level keys: {sorted(map(str, obj))[:8]}{_foreign_hint(obj)}"
    return f"found a {type(obj).__name__}"


def _unwrap(obj, source):
    """-> (generator state dict, container kind, which weights)."""
    if not is_reference_checkpoint(obj):
        raise CheckpointError(f"{source} is not a StyleNAT reference checkpoint ({_describe(obj)})")
    if "state_dicts" in obj:
        container, kind = obj["state_dicts"], "new"
    elif "g_ema" in obj or "g" in obj:
        container, kind = obj, "legacy"
    else:
        return dict(_strip_module_prefix(obj)), "bare", "state_dict"
    which = "g_ema" if _looks_like_reference_g(container.get("g_ema")) else "g"
    return dict(_strip_module_prefix(container[which])), kind, which


# ------------------------------------------------------------------------------------------- key maps
def _shape(t):
    return list(t.shape)


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


def reference_relative_position_index(size):
    """The buffer the reference MHSA layer registers: per axis (query - key) + (size - 1), row-major over a
    (2 size - 1)^2 table, then the [N, N] matrix flipped in both dimensions (which turns it into key - query)."""
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()])  # [2, N]
    rel = coords[:, :, None] - coords[:, None, :] + (size - 1)  # [2, Nq, Nk]: query - key
    index = rel[0] * (2 * size - 1) + rel[1]
    return torch.flip(index, dims=(0, 1))


def _our_relative_position_index(size):
    from stylenat.models.attention import relative_position_index

    return relative_position_index(size)


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
    from stylenat.ops.upfirdn import make_kernel

    return make_kernel([1, 3, 3, 1]) * 4


# --------------------------------------------------------------------------------------- attention groups
def _na_tables(sd, prefix):
    """The NA bias tables of one reference block, in head order: (layout, [(key, table), ...])."""
    if f"{prefix}rpb0" in sd or f"{prefix}rpb1" in sd:
        for name in ("rpb0", "rpb1"):
            if f"{prefix}{name}" not in sd:
                raise CheckpointError(f"missing key {prefix + name!r}")
        return "legacy", [(f"{prefix}rpb0", sd[f"{prefix}rpb0"]), (f"{prefix}rpb1", sd[f"{prefix}rpb1"])]
    tables, i = [], 0
    while f"{prefix}rpb.{i}" in sd:
        tables.append((f"{prefix}rpb.{i}", sd[f"{prefix}rpb.{i}"]))
        i += 1
    if not tables:
        raise CheckpointError(f"missing key {prefix + 'rpb0'!r} (or {prefix + 'rpb.0'!r})")
    return "new", tables


def _check_table(key, t):
    if t.ndim != 3 or t.shape[1] != t.shape[2] or t.shape[1] % 2 == 0:
        raise CheckpointError(f"key {key!r} has shape {_shape(t)} but expected [heads, 2k-1, 2k-1]")
    return (t.shape[1] + 1) // 2


def _per_head_kernels(tables):
    out = []
    for key, t in tables:
        out += [_check_table(key, t)] * t.shape[0]
    return out


def _group_structure(heads, kernels, dilations):
    """Our per-head (kernel, dilation) list and group head counts for one NA stage."""
    from stylenat.models.attention import broadcast_groups, split_heads

    ks, ds = broadcast_groups(kernels, dilations)
    counts = split_heads(heads, len(ks))
    per_head = []
    for n, k, d in zip(counts, ks, ds):
        per_head += [(k, d)] * n
    return counts, per_head


def _paper_dilations(size):
    return [1] if size <= 8 else [1, size // 8]


# ------------------------------------------------------------------------------------------ inference
def _stage_count(sd):
    stages = sorted({int(m.group(1)) for k in sd if (m := _STAGE_KEY.match(str(k)))})
    if not stages:
        raise CheckpointError("missing key 'layers.0.blocks.0.attn.qkv.weight'")
    if stages != list(range(len(stages))):
        missing = next(s for s in range(len(stages)) if s not in stages)
        raise CheckpointError(f"missing key 'layers.{missing}.blocks.0.attn.qkv.weight'")
    return len(stages)


def _need(sd, key):
    if key not in sd:
        raise CheckpointError(f"missing key {key!r}")
    return sd[key]


def infer_reference_config(g_state_dict, dilations=None) -> dict:
    """Our GeneratorConfig (as a dict) for a reference generator state dict.

    Resolution, channels, heads, kernels, MLP ratio and mapping size come from the tensors; dilations cannot
    (NA has no parameters that depend on them), so they follow the paper rule ([1] at 4x4 and 8x8,
    [1, res/8] from 16x16 up) unless `dilations` (one list per stage, 4x4 first) overrides them.
    """
    sd = g_state_dict
    n_mlp = len([k for k in sd if _STYLE_KEY.match(str(k))])
    if n_mlp == 0:
        raise CheckpointError("missing key 'style.1.weight'")
    w0 = _need(sd, "style.1.weight")
    w_last = _need(sd, f"style.{n_mlp}.weight")
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
        qkv = _need(sd, f"{prefix}attn.qkv.weight")
        if qkv.ndim != 2:
            raise CheckpointError(
                f"key {prefix + 'attn.qkv.weight'!r} has shape {_shape(qkv)} but expected [3C, C]"
            )
        c = int(qkv.shape[1])
        channels.append(c)
        fc1 = _need(sd, f"{prefix}mlp.fc1.weight")
        mlp_ratios.append(fc1.shape[0] / c)
        if s == 0:
            rpb = _need(sd, f"{prefix}attn.rpb")
            heads.append(int(rpb.shape[0]))
            kernels.append([3])  # unused by the 4x4 MHSA stage; the paper config's value
            dils.append(list(dilations[0]) if dilations is not None else [1])
            continue
        _, tables = _na_tables(sd, f"{prefix}attn.")
        per_head = _per_head_kernels(tables)
        if c % len(per_head):
            shapes = ", ".join(f"{k!r} {_shape(t)}" for k, t in tables)
            raise CheckpointError(
                f"bias tables {shapes} hold {len(per_head)} heads, which do not divide {c} channels"
            )
        heads.append(len(per_head))
        group_kernels = [_check_table(k, t) for k, t in tables]
        if dilations is not None:
            d = list(dilations[s])
        elif len(tables) == 2 and size >= 16 or len(tables) == 1 and size <= 8:
            d = _paper_dilations(size)
        elif len(tables) == 2 and size <= 8:  # the legacy layout's two halves, both at dilation 1
            d = [1]
        else:
            raise CheckpointError(
                f"stage {size}x{size} has {len(tables)} attention groups, which the paper's dilation rule does not "
                f"cover; give the dilations explicitly (e.g. --dilations)"
            )
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
        "na_backend": "auto",
        "checkpoint_blocks": False,
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


# ------------------------------------------------------------------------------------------ conversion
def _meta_generator(cfg):
    from stylenat.models.generator import Generator, GeneratorConfig

    try:
        config = GeneratorConfig.from_dict(cfg)
        with torch.device("meta"):
            return Generator(config)
    except ValueError as err:
        raise CheckpointError(f"the inferred generator config is invalid: {err}") from None


def _w_avg(sd, cfg, samples, seed):
    from stylenat.models.generator import MappingNetwork

    mapping = MappingNetwork(cfg["z_dim"], cfg["w_dim"], cfg["n_mlp"], cfg["lr_mlp"])
    mapping.layers.load_state_dict(
        {
            f"{i}.{p}": sd[f"mapping_net.layers.{i}.{p}"]
            for i in range(cfg["n_mlp"])
            for p in ("weight", "bias")
        }
    )
    if samples <= 0:
        return torch.zeros(cfg["w_dim"])
    gen = torch.Generator().manual_seed(int(seed))
    total = torch.zeros(cfg["w_dim"], dtype=torch.float64)
    with torch.no_grad():
        done = 0
        while done < samples:
            n = min(4096, samples - done)
            z = torch.randn(n, cfg["z_dim"], generator=gen)
            total += mapping(z).double().sum(0)
            done += n
    return (total / samples).float()


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tensor(t):
    t = t.detach()
    if t.is_floating_point():
        t = t.float()
    return t.contiguous().clone()


def convert_generator_state(sd, cfg):
    """Reference generator state dict -> (our state dict without w_avg, info dict). Checks every key and shape."""
    G = _meta_generator(cfg)
    ours_expected = {k: v for k, v in G.state_dict().items()}
    n = G.cfg.num_stages
    out, used, info = {}, set(), {"attention_layout": set(), "rp_index": set()}
    for ours, ref, kind in _plain_pairs(G.cfg.n_mlp, n):
        t = _need(sd, ref)
        want = _ref_shape(_shape(ours_expected[ours]), kind)
        if _shape(t) != want:
            raise CheckpointError(f"key {ref!r} has shape {_shape(t)} but expected {want}")
        out[ours] = _tensor(_to_ours(t, kind))
        used.add(ref)

    blur = _blur_kernel()
    for s in range(n):
        stage = G.stages[s]
        size = stage.size
        for j in range(2):
            prefix = f"layers.{s}.blocks.{j}.attn."
            attn = stage.blocks[j].attn
            if s == 0:
                key = f"{prefix}rpb"
                t = _need(sd, key)
                want = _shape(attn.rpb)
                if _shape(t) != want:
                    raise CheckpointError(f"key {key!r} has shape {_shape(t)} but expected {want}")
                ours_index = _our_relative_position_index(size)
                idx_key = f"{prefix}relative_position_index"
                if idx_key in sd:
                    ref_index = sd[idx_key]
                    used.add(idx_key)
                    if _shape(ref_index) != _shape(ours_index):
                        raise CheckpointError(
                            f"key {idx_key!r} has shape {_shape(ref_index)} but expected {_shape(ours_index)}"
                        )
                    info["rp_index"].add(
                        "reference (flipped)"
                        if torch.equal(ref_index.long(), ours_index)
                        else "other (re-indexed)"
                    )
                else:
                    ref_index = reference_relative_position_index(size)
                    info["rp_index"].add("absent (reference assumed)")
                out[f"stages.{s}.blocks.{j}.attn.rpb"] = _tensor(
                    _remap_table(t, ref_index, ours_index, idx_key)
                )
                used.add(key)
                continue
            layout, tables = _na_tables(sd, prefix)
            info["attention_layout"].add(layout)
            for key, t in tables:
                _check_table(key, t)
                used.add(key)
            ref_kernels = _per_head_kernels(tables)
            counts, per_head = _group_structure(attn.num_heads, G.cfg.kernels[s], G.cfg.dilations[s])
            our_kernels = [k for k, _ in per_head]
            start = 0
            for key, t in tables:  # name the first table whose shape the config does not expect
                span = set(our_kernels[start : start + t.shape[0]])
                start += t.shape[0]
                if len(span) == 1 and start <= len(our_kernels):
                    k = span.pop()
                    want = [t.shape[0], 2 * k - 1, 2 * k - 1]
                    if _shape(t) != want:
                        raise CheckpointError(f"key {key!r} has shape {_shape(t)} but expected {want}")
            if ref_kernels != our_kernels:
                raise CheckpointError(
                    f"{prefix}rpb: stage {size}x{size} has per-head kernel sizes {ref_kernels} in the checkpoint "
                    f"but {our_kernels} in the config"
                )
            per_head_tables = [row for _, t in tables for row in t.unbind(0)]
            start = 0
            for g, count in enumerate(counts):
                out[f"stages.{s}.blocks.{j}.attn.rpb.{g}"] = _tensor(
                    torch.stack(per_head_tables[start : start + count])
                )
                start += count
        if s < n - 1:
            key = f"layers.{s}.upsample.sin_pos_embed._float_tensor"
            if key in sd:
                used.add(key)
            key = f"to_rgbs.{s}.upsample.kernel"
            if key in sd:
                used.add(key)
                k = sd[key]
                if _shape(k) != _shape(blur) or not torch.allclose(k.float(), blur, rtol=0, atol=1e-6):
                    raise CheckpointError(
                        f"key {key!r} is not the [1, 3, 3, 1] blur kernel this generator uses"
                    )
    unexpected = [k for k in sd if k not in used]
    if unexpected:
        raise CheckpointError(f"unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected in all)")
    missing = [k for k in ours_expected if k not in out and k != "w_avg"]
    if missing:  # a bug guard: every key of our generator must have a source
        raise CheckpointError(f"no source for our key {missing[0]!r}")
    for k, v in out.items():
        if _shape(v) != _shape(ours_expected[k]):
            raise CheckpointError(
                f"converted key {k!r} has shape {_shape(v)} but expected {_shape(ours_expected[k])}"
            )
    layouts = info["attention_layout"]
    info["attention_layout"] = layouts.pop() if len(layouts) == 1 else ("mixed" if layouts else "none")
    info["rp_index"] = sorted(info["rp_index"])
    return out, info


def reference_to_snapshot(
    obj, source=None, dilations=None, w_avg_samples=10_000, seed=0, sha256=None
) -> dict:
    """A reference checkpoint (loaded dict) -> our snapshot dict (see `stylenat.snapshot.snapshot_dict`).

    Takes `g_ema` (falling back to `g`). `source` is recorded in meta; when it names a file its sha256 is
    recorded too (pass `sha256` to skip re-hashing). Errors are one-line `CheckpointError`s.
    """
    where = source if source is not None else "checkpoint"
    sd, container, which = _unwrap(obj, where)
    try:
        cfg = infer_reference_config(sd, dilations=dilations)
        state, info = convert_generator_state(sd, cfg)
    except CheckpointError as err:
        raise CheckpointError(f"{where}: {err}") from None
    state["w_avg"] = _w_avg(state, cfg, w_avg_samples, seed)
    if sha256 is None and source is not None and Path(source).is_file():
        sha256 = _sha256(source)
    meta = {
        "source": None if source is None else str(source),
        "source_sha256": sha256,
        "converted_from": "SHI-Labs/StyleNAT reference checkpoint",
        "reference_container": container,  # legacy: top-level g/d/g_ema; new: state_dicts{...}; bare
        "reference_weights": which,
        "reference_attention_layout": info["attention_layout"],  # legacy: rpb0/rpb1; new: rpb.{i}
        "reference_rp_index": info["rp_index"],
        "dilations_from": "override" if dilations is not None else "paper rule",
        "w_avg_samples": int(w_avg_samples),
        "w_avg_seed": int(seed),
        "conversion_version": CONVERSION_VERSION,
    }
    return {
        "format": SNAPSHOT_FORMAT,
        "version": SNAPSHOT_VERSION,
        "model_config": cfg,
        "state_dict": state,
        "meta": meta,
    }


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
    from stylenat.models.generator import GeneratorConfig

    cfg = GeneratorConfig.from_dict(snapshot["model_config"])
    sd = snapshot["state_dict"]
    n = cfg.num_stages
    out = {}
    for ours, ref, kind in _plain_pairs(cfg.n_mlp, n):
        out[ref] = _tensor(_to_ref(sd[ours], kind))
    for s in range(n):
        size = 4 * 2**s
        for j in range(2):
            prefix = f"layers.{s}.blocks.{j}.attn."
            if s == 0:
                ours_index = _our_relative_position_index(size)
                ref_index = reference_relative_position_index(size)
                out[f"{prefix}rpb"] = _tensor(
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
                _, per_head = _group_structure(heads, cfg.kernels[s], cfg.dilations[s])
                half = heads // 2
                if heads % 2 or len(set(per_head[:half])) != 1 or len(set(per_head[half:])) != 1:
                    raise ValueError(
                        f"stage {size}x{size}: heads {per_head} cannot be written as the legacy layer's two equal halves"
                    )
                rows = [row for t in tables for row in t.unbind(0)]
                out[f"{prefix}rpb0"] = _tensor(torch.stack(rows[:half]))
                out[f"{prefix}rpb1"] = _tensor(torch.stack(rows[half:]))
            else:
                for g, t in enumerate(tables):
                    out[f"{prefix}rpb.{g}"] = _tensor(t)
        if s < n - 1:
            out[f"layers.{s}.upsample.sin_pos_embed._float_tensor"] = torch.zeros(1)
            out[f"to_rgbs.{s}.upsample.kernel"] = _blur_kernel()
    order = _reference_order(n)
    return dict(sorted(out.items(), key=lambda kv: order(kv[0])))


def _reference_order(n_stages):
    """Sort key approximating the reference module registration order (style, input, layers, to_rgbs)."""

    def key(k):
        parts = k.split(".")
        head = {"style": 0, "input": 1, "layers": 2, "to_rgbs": 3}.get(parts[0], 4)
        nums = [int(p) for p in parts[1:3] if p.isdigit()]
        return (head, nums, k)

    return key


def reference_checkpoint(g_state_dict, layout="legacy", d_state_dict=None, g_train=None, args=None):
    """Wrap reference state dicts in the reference file container (legacy: top level; new: state_dicts)."""
    g = g_state_dict if g_train is None else g_train
    d = {} if d_state_dict is None else d_state_dict
    if layout == "legacy":
        return {"g": g, "d": d, "g_ema": g_state_dict}
    return {"state_dicts": {"g": g, "d": d, "g_ema": g_state_dict}, "optim_dicts": {}, "args": args or {}}


# --------------------------------------------------------------------------------------- discriminator
def convert_discriminator_state(d_state_dict, resolution, channel_multiplier=2):
    """Reference wavelet-D state dict (spectral norm on) -> ours, plus our D config.

    Our `WaveletDiscriminator` mirrors the reference module names, so tensors keep their keys
    (`...weight_orig`, `weight_u`, `weight_v` from torch's spectral_norm, FusedLeakyReLU `bias`); every key
    and shape is checked and the constant buffers (Haar filters, blur kernels) must equal ours.
    """
    from stylenat.models.discriminator import build_discriminator, channel_table

    d_cfg = {"name": "wavelet", "channel_multiplier": int(channel_multiplier), "sn": True}
    sd = d_state_dict
    # Channels per level from the tensors (so small or non-paper discriminators convert too).
    channels, log_size = {}, int(round(math.log2(resolution))) - 1
    if "from_rgbs.0.conv.0.weight_orig" in sd:
        channels[resolution] = int(sd["from_rgbs.0.conv.0.weight_orig"].shape[0])
    for n in range(log_size - 2):
        key = f"convs.{n}.conv2.1.weight_orig"
        if key in sd:
            channels[2 ** (log_size - n - 1)] = int(sd[key].shape[0])
    default = channel_table(resolution, channel_multiplier)
    if any(default.get(k) != v for k, v in channels.items()):
        d_cfg["channels"] = channels
    try:
        D = build_discriminator("wavelet", resolution, **{k: v for k, v in d_cfg.items() if k != "name"})
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
        if _shape(t) != _shape(v):
            raise CheckpointError(f"discriminator: key {k!r} has shape {_shape(t)} but expected {_shape(v)}")
        if k in buffers and not k.endswith(("weight_u", "weight_v")):
            if not torch.allclose(t.float(), v.float(), rtol=0, atol=1e-6):
                raise CheckpointError(f"discriminator: constant buffer {k!r} differs from ours")
        out[k] = _tensor(t)
    return out, d_cfg


def reference_to_training_weights(
    obj, snapshot=None, source=None, dilations=None, w_avg_samples=10_000, seed=0
):
    """G, G_ema and D of a reference checkpoint under our names (to initialise or fine-tune a run).

    Not a resumable training state: the reference optimizer states, counters and RNG do not map onto
    ours. `snapshot` (from `reference_to_snapshot` on the same object) saves recomputing the G_ema part.
    """
    where = source if source is not None else "checkpoint"
    if snapshot is None:
        snapshot = reference_to_snapshot(
            obj, source=source, dilations=dilations, w_avg_samples=w_avg_samples, seed=seed
        )
    container = obj.get("state_dicts", obj) if isinstance(obj, dict) else None
    if not isinstance(container, dict) or not isinstance(container.get("d"), dict) or not container["d"]:
        raise CheckpointError(f"{where}: missing key 'd' (the discriminator state dict)")
    cfg = snapshot["model_config"]
    g_train = _strip_module_prefix(container.get("g"))
    try:
        if isinstance(g_train, dict) and g_train:
            g_state, _ = convert_generator_state(g_train, cfg)
            g_state["w_avg"] = snapshot["state_dict"]["w_avg"].clone()
            g_from = "g"
        else:
            g_state, g_from = (
                {k: v.clone() for k, v in snapshot["state_dict"].items()},
                "g_ema (no g in the file)",
            )
        cm = cfg["channel_multiplier"] if cfg.get("channels") is None else 2
        d_state, d_cfg = convert_discriminator_state(
            _strip_module_prefix(container["d"]), cfg["resolution"], cm
        )
    except CheckpointError as err:
        raise CheckpointError(f"{where}: {err}") from None
    meta = dict(
        snapshot["meta"],
        generator_from=g_from,
        discriminator=f"wavelet D, sn, cm={d_cfg['channel_multiplier']}",
    )
    return {
        "format": "stylenat.reference-weights",
        "version": 1,
        "model_config": cfg,
        "discriminator_config": d_cfg,
        "G": g_state,
        "G_ema": snapshot["state_dict"],
        "D": d_state,
        "meta": meta,
    }


def load_reference(path, dilations=None, w_avg_samples=10_000, seed=0):
    """Read a reference file from disk and convert it to a snapshot dict."""
    data = read_reference_checkpoint(path)
    return reference_to_snapshot(
        data, source=str(path), dilations=dilations, w_avg_samples=w_avg_samples, seed=seed
    )


__all__ = [
    "CONVERSION_VERSION",
    "infer_reference_config",
    "is_reference_checkpoint",
    "convert_discriminator_state",
    "convert_generator_state",
    "load_reference",
    "read_reference_checkpoint",
    "reference_checkpoint",
    "reference_relative_position_index",
    "reference_to_snapshot",
    "reference_to_training_weights",
    "snapshot_to_reference",
]
