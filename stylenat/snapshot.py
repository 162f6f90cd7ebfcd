"""Inference snapshots: EMA generator weights + the model config that rebuilds them.

A snapshot is a plain dict of tensors and Python scalars, so `torch.load(path, weights_only=True)` reads it
without this source tree. Resumable training state lives in `stylenat.training.checkpoint`.
"""

import os
import tempfile
from pathlib import Path

import torch

SNAPSHOT_FORMAT = "stylenat.snapshot"
SNAPSHOT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint or snapshot file that cannot be used; the message names the file and the problem."""


class _WriteTracker:
    """A writable file that remembers the OSError of a failed write: torch.save turns it into an
    opaque RuntimeError ("unexpected pos ..."), and the caller should learn "No space left on device"."""

    def __init__(self, f):
        self._f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except OSError as err:
            self.error = err
            raise

    def __getattr__(self, name):
        return getattr(self._f, name)


def atomic_save(obj, path):
    """torch.save to a temp file in the same directory, fsync, then rename: a crash never leaves half a file.

    A failed write (disk full, I/O error) removes the temp file, leaves any existing ``path`` untouched
    and raises OSError naming ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tracker = None
    try:
        with os.fdopen(fd, "wb") as f:
            tracker = _WriteTracker(f)
            torch.save(obj, tracker)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        cause = tracker.error if tracker is not None and tracker.error is not None else err
        if isinstance(cause, OSError):
            raise OSError(cause.errno, f"cannot write {path}: {cause.strerror or cause}") from None
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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
    from stylenat.models.build import build_generator

    G = build_generator(snapshot["model_config"])
    load_state_dict_strict(G, snapshot["state_dict"], source)
    return G


def load_generator(path, device="cpu"):
    """Load a snapshot (native, converted official, or an official reference file) ready for sampling."""
    from stylenat.convert import read_reference_checkpoint  # read_checkpoint + the reference files' `args`

    data = read_reference_checkpoint(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a StyleNAT checkpoint (found a {type(data).__name__})")
    if data.get("format") != SNAPSHOT_FORMAT:
        if "G_ema" in data and "model_config" in data:  # a resumable training state
            data = {"model_config": data["model_config"], "state_dict": data["G_ema"]}
        else:
            from stylenat.convert import is_reference_checkpoint, reference_to_snapshot

            if not is_reference_checkpoint(data):
                raise CheckpointError(
                    f"{path} is not a StyleNAT checkpoint (top-level keys: {sorted(map(str, data))[:8]})"
                )
            data = reference_to_snapshot(data, source=str(path))
    G = generator_from_snapshot(data, source=str(path))
    return G.eval().requires_grad_(False).to(device)
