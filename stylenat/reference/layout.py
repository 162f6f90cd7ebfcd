"""How official reference files look: reading them safely, telling them from other files, unwrapping the
generator state dict from its container, and the shapes of the reference attention bias tables.

Legacy files (the released `FFHQ256_940k_flip.pt`, `FFHQ1024_700k.pt`) hold `g`, `d`, `g_ema` at the top
level; newer training saves them under `state_dicts` next to `optim_dicts` and `args`.
"""

from __future__ import annotations

import argparse
import re

import torch

from stylenat.snapshot import CheckpointError, read_checkpoint

# Python objects (besides tensors and builtins) that reference checkpoints may carry under `args`;
# allowlisted for torch.load(weights_only=True) through torch.serialization.safe_globals.
SAFE_REFERENCE_GLOBALS = {"argparse.Namespace": argparse.Namespace}

STAGE_KEY = re.compile(r"^layers\.(\d+)\.")
STYLE_KEY = re.compile(r"^style\.(\d+)\.weight$")


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
    except Exception as err:  # the restricted unpickler raises assorted types; its message names globals
        retry = str(err)
    try:  # name the refused globals (zip checkpoints), else take them from the unpickler's message
        names = [str(n) for n in torch.serialization.get_unsafe_globals_in_checkpoint(str(path))]
    except Exception:  # not a zip checkpoint (legacy or corrupt): fall back to the message
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


# ------------------------------------------------------------------------------------------- detection
def strip_module_prefix(sd):
    """State dicts saved from a DistributedDataParallel wrapper carry a `module.` prefix on every key."""
    if isinstance(sd, dict) and sd and all(str(k).startswith("module.") for k in sd):
        return {str(k)[len("module.") :]: v for k, v in sd.items()}
    return sd


def _looks_like_reference_g(sd):
    sd = strip_module_prefix(sd)
    return (
        isinstance(sd, dict)
        and "input.input" in sd
        and "layers.0.blocks.0.attn.qkv.weight" in sd
        and any(STYLE_KEY.match(str(k)) for k in sd)
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


def describe(obj):
    """What a loaded object is, for an error message: its top-level keys and a guess at its origin."""
    if isinstance(obj, dict):
        return f"top-level keys: {sorted(map(str, obj))[:8]}{_foreign_hint(obj)}"
    return f"found a {type(obj).__name__}"


def unwrap(obj, source):
    """-> (generator state dict, container kind, which weights); g_ema is preferred over g."""
    if not is_reference_checkpoint(obj):
        raise CheckpointError(f"{source} is not a StyleNAT reference checkpoint ({describe(obj)})")
    if "state_dicts" in obj:
        container, kind = obj["state_dicts"], "new"
    elif "g_ema" in obj or "g" in obj:
        container, kind = obj, "legacy"
    else:
        return dict(strip_module_prefix(obj)), "bare", "state_dict"
    which = "g_ema" if _looks_like_reference_g(container.get("g_ema")) else "g"
    return dict(strip_module_prefix(container[which])), kind, which


def reference_checkpoint(g_state_dict, layout="legacy", d_state_dict=None, g_train=None, args=None):
    """Wrap reference state dicts in the reference file container (legacy: top level; new: state_dicts)."""
    g = g_state_dict if g_train is None else g_train
    d = {} if d_state_dict is None else d_state_dict
    if layout == "legacy":
        return {"g": g, "d": d, "g_ema": g_state_dict}
    return {"state_dicts": {"g": g, "d": d, "g_ema": g_state_dict}, "optim_dicts": {}, "args": args or {}}


# ------------------------------------------------------------------------------------ tensors by name
def shape(t):
    return list(t.shape)


def as_float_copy(t):
    """A detached, contiguous copy; floating tensors in float32 (the reference stored some in other types)."""
    t = t.detach()
    if t.is_floating_point():
        t = t.float()
    return t.contiguous().clone()


def need(sd, key):
    """sd[key], or a one-line error naming the missing key."""
    if key not in sd:
        raise CheckpointError(f"missing key {key!r}")
    return sd[key]


def na_tables(sd, prefix):
    """The NA bias tables of one reference block, in head order: (layout, [(key, table), ...]).

    The legacy split-head layer always has two halves (`rpb0`, `rpb1`), also at 8x8 where both halves
    use dilation 1; the Hydra layer has one table per group (`rpb.{i}`).
    """
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


def table_kernel(key, t):
    """The kernel size of one bias table [heads, 2k-1, 2k-1], or an error naming its shape."""
    if t.ndim != 3 or t.shape[1] != t.shape[2] or t.shape[1] % 2 == 0:
        raise CheckpointError(f"key {key!r} has shape {shape(t)} but expected [heads, 2k-1, 2k-1]")
    return (t.shape[1] + 1) // 2


def per_head_kernels(tables):
    out = []
    for key, t in tables:
        out += [table_kernel(key, t)] * t.shape[0]
    return out


def reference_relative_position_index(size):
    """The buffer the reference MHSA layer registers: per axis (query - key) + (size - 1), row-major over a
    (2 size - 1)^2 table, then the [N, N] matrix flipped in both dimensions (which turns it into key - query)."""
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()])  # [2, N]
    rel = coords[:, :, None] - coords[:, None, :] + (size - 1)  # [2, Nq, Nk]: query - key
    index = rel[0] * (2 * size - 1) + rel[1]
    return torch.flip(index, dims=(0, 1))
