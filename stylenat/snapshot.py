"""Our checkpoint formats: inference snapshots (EMA generator weights + the model config that rebuilds them)
and the one-line errors of reading any checkpoint file.

A snapshot is a plain dict of tensors and Python scalars, so `torch.load(path, weights_only=True)` reads it
without this source tree. Resumable training state lives in `stylenat.training.checkpoint`; official
reference files are converted by `stylenat.reference`, which also holds `load_generator` (any of them).
"""

from pathlib import Path

import torch

from stylenat.files import atomic_save

SNAPSHOT_FORMAT = "stylenat.snapshot"
SNAPSHOT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint or snapshot file that cannot be used; the message names the file and the problem."""


def read_checkpoint(path):
    """torch.load(weights_only=True) with one-line errors for missing, truncated or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises assorted types (RuntimeError, UnpicklingError, EOFError...) here
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated, corrupt or not a torch file): {detail[:200]}"
        ) from None


def snapshot_dict(G, extra=None):
    return {
        "format": SNAPSHOT_FORMAT,
        "version": SNAPSHOT_VERSION,
        "model_config": G.model_config,
        "state_dict": {k: v.detach().cpu() for k, v in G.state_dict().items()},
        "meta": dict(extra or {}),
    }


def save_snapshot(path, G, extra=None):
    """Write the (EMA) generator as an inference snapshot; `extra` holds plain metadata (kimg, source...)."""
    atomic_save(snapshot_dict(G, extra), path)


def native_snapshot(data):
    """`data` as a snapshot dict when it is one of our formats, else None (so a converter may try it).

    Our formats: an inference snapshot, or a resumable training state (its `G_ema` and `model_config`).
    """
    if not isinstance(data, dict):
        return None
    if data.get("format") == SNAPSHOT_FORMAT:
        return data
    if "G_ema" in data and "model_config" in data:
        snapshot = {"model_config": data["model_config"], "state_dict": data["G_ema"]}
        if data.get("class_names") is not None:  # a conditional run's state
            snapshot["meta"] = {"class_names": data["class_names"]}
        return snapshot
    return None


def load_state_dict_strict(module, state_dict, source):
    """load_state_dict with one-line errors naming the first missing/unexpected key or shape mismatch."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if missing:
        raise CheckpointError(f"{source}: missing key {missing[0]!r} ({len(missing)} missing in all)")
    if unexpected:
        raise CheckpointError(
            f"{source}: unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected in all)"
        )
    for key, value in own.items():
        if tuple(state_dict[key].shape) != tuple(value.shape):
            raise CheckpointError(
                f"{source}: key {key!r} has shape {list(state_dict[key].shape)} but the model expects {list(value.shape)}"
            )
    module.load_state_dict(state_dict)


def generator_from_snapshot(snapshot, source="snapshot"):
    """The generator of a snapshot dict, with ``G.class_names`` from its meta (a conditional one's)."""
    from stylenat.models.build import build_generator

    G = build_generator(snapshot["model_config"])
    load_state_dict_strict(G, snapshot["state_dict"], source)
    G.class_names = class_names_of(snapshot, G.c_dim, source)
    return G


def class_names_of(snapshot, c_dim: int, source="snapshot"):
    """The snapshot meta's ``class_names`` (list[str]) of a conditional generator, else None; a list that
    does not name c_dim classes is one error."""
    names = (snapshot.get("meta") or {}).get("class_names")
    if not c_dim or names is None:
        return None
    if (
        not isinstance(names, (list, tuple))
        or len(names) != c_dim
        or not all(isinstance(n, str) for n in names)
    ):
        raise CheckpointError(f"{source}: meta class_names={names!r}: expected {c_dim} names (c_dim={c_dim})")
    return list(names)
