"""Training-state files: naming, atomic save, finding the latest, keep-last-K pruning, resume checks, RNG.

A training state (``training-state-<kimg>.pt``) holds everything needed to continue bit-exactly: G, D,
G_ema, both optimizers, the lr schedule position, counters, every rank's RNG states, the sampler
position and the resolved config. It is written by rank 0 only, atomically (temporary file, fsync,
rename), and loads with ``torch.load(weights_only=True)`` (RNG states are stored as tensors and lists).
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from stylenat.models.generator import LEGACY_RUNTIME_KEYS

log = logging.getLogger(__name__)

STATE_FORMAT = "stylenat-training-state"
STATE_VERSION = 1
STATE_PREFIX = "training-state-"
SNAPSHOT_PREFIX = "network-snapshot-"
SAMPLES_PREFIX = "samples-"
_NAME_RE = re.compile(r"^(?P<prefix>[a-z-]+-)(?P<kimg>\d+\.\d{3})\.(?P<ext>pt|png)$")

# Config sections whose change makes a state unusable (the networks' shapes and meaning).
COMPATIBILITY_SECTIONS = ("model", "discriminator")
# Train keys a state cannot change: D's optimizer holds only the parameters train.freeze_d leaves free.
FIXED_TRAIN_KEYS = {"freeze_d": 0}
# Run-time settings that states written before they moved out of ``model`` still carry there: ignored.
_LEGACY_STATE_KEYS = {f"model.{key}" for key in LEGACY_RUNTIME_KEYS}


class ResumeError(ValueError):
    """A state that cannot be resumed (other model config, unreadable file); the message names why."""


def kimg_tag(images_seen: int) -> str:
    """File-name tag for a position: thousands of images with 3 decimals, zero-padded (sorts by name)."""
    return f"{images_seen // 1000:06d}.{images_seen % 1000:03d}"


def artifact_path(run_dir: Path, prefix: str, images_seen: int, ext: str = "pt") -> Path:
    return Path(run_dir) / f"{prefix}{kimg_tag(images_seen)}.{ext}"


def list_artifacts(run_dir: Path, prefix: str) -> list[tuple[int, Path]]:
    """(images_seen, path) of every ``<prefix><kimg>.*`` file in ``run_dir``, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    out = []
    for p in run_dir.iterdir():
        m = _NAME_RE.match(p.name)
        if m and m.group("prefix") == prefix and p.is_file():
            whole, frac = m.group("kimg").split(".")
            out.append((int(whole) * 1000 + int(frac), p))
    return sorted(out)


def find_latest_state(run_dir: Path) -> Path | None:
    """The newest training state in ``run_dir`` (by position), or None."""
    states = list_artifacts(run_dir, STATE_PREFIX)
    return states[-1][1] if states else None


def resolve_resume(resume, run_dir: Path) -> Path | None:
    """The state file to resume from: ``resume`` (a state file or a run dir), else ``run_dir``'s latest."""
    if resume is None or resume == "":
        return find_latest_state(run_dir)
    path = Path(str(resume)).expanduser()
    if path.is_dir():
        latest = find_latest_state(path)
        if latest is None:
            raise FileNotFoundError(f"resume={resume}: the directory holds no {STATE_PREFIX}*.pt file")
        return latest
    if not path.is_file():
        raise FileNotFoundError(f"resume={resume}: no such file or directory")
    return path


def load_resume_state(resume, run_dir: Path) -> tuple[Path | None, dict | None, list[Path]]:
    """(path, state, unreadable newer states) to resume from; (None, None, []) for a fresh run.

    ``resume`` naming a file loads exactly that file (an unreadable one is an error). Otherwise the
    newest readable state of the directory (``resume`` or ``run_dir``) wins: an unreadable newer one
    (truncated, corrupt) is skipped with a warning naming it, and when every state is unreadable the
    error names them all and nothing is written.
    """
    newest = resolve_resume(resume, run_dir)
    if newest is None:
        return None, None, []
    if resume not in (None, "") and not Path(str(resume)).expanduser().is_dir():
        return newest, load_state(newest), []  # a named file: exactly that one
    candidates = [p for _, p in reversed(list_artifacts(newest.parent, STATE_PREFIX))]
    unreadable: list[Path] = []
    for path in candidates:
        try:
            return path, load_state(path), unreadable
        except ResumeError as err:
            log.warning("skipping unreadable training state %s (%s); trying the previous one", path, err)
            unreadable.append(path)
    raise ResumeError(
        f"all {len(unreadable)} training state(s) in {newest.parent} are unreadable "
        f"({', '.join(p.name for p in unreadable)}); nothing was written: move them aside to start "
        "afresh, or pass resume=<file>"
    )


def quarantine(paths: list[Path]) -> None:
    """Rename unreadable states to ``<name>.corrupt`` so neither resume nor pruning trips on them again."""
    for path in paths:
        target = path.with_name(path.name + ".corrupt")
        path.replace(target)
        log.warning("renamed unreadable training state %s to %s", path.name, target.name)


def prune(run_dir: Path, prefix: str, keep: int | None) -> list[Path]:
    """Delete all but the newest ``keep`` files of one kind (None keeps everything); returns the deleted."""
    if keep is None:
        return []
    items = list_artifacts(run_dir, prefix)
    doomed = [p for _, p in items[: max(0, len(items) - keep)]]
    for p in doomed:
        p.unlink(missing_ok=True)
        log.debug("pruned %s", p)
    return doomed


def save_state(state: dict, path: Path) -> None:
    """Write a training state atomically (never a half-written file under the final name)."""
    from stylenat.files import atomic_save

    atomic_save({"format": STATE_FORMAT, "version": STATE_VERSION, **state}, Path(path))


def load_state(path: Path) -> dict:
    """Read a training state (CPU tensors, weights_only) and check it is one."""
    from stylenat.snapshot import CheckpointError, read_checkpoint

    path = Path(path)
    try:
        state = read_checkpoint(path)
    except CheckpointError as exc:
        raise ResumeError(f"cannot read training state: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ResumeError(f"{path} is not a stylenat training state (inference snapshots cannot be resumed)")
    if state.get("version") != STATE_VERSION:
        raise ResumeError(
            f"{path} has training-state version {state.get('version')!r}, expected {STATE_VERSION}"
        )
    return state


def _flatten(prefix: str, value, out: dict) -> dict:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = list(value) if isinstance(value, tuple) else value
    return out


def config_differences(saved: Mapping, current: Mapping, sections=COMPATIBILITY_SECTIONS) -> list[tuple]:
    """(key, saved value, current value) for every weight-relevant key that differs, sorted by key."""
    a, b = {}, {}
    for s in sections:
        _flatten(s, saved.get(s, {}), a)
        _flatten(s, current.get(s, {}), b)
    missing = object()
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key in _LEGACY_STATE_KEYS:
            continue
        va, vb = a.get(key, missing), b.get(key, missing)
        if va != vb:
            diffs.append((key, None if va is missing else va, None if vb is missing else vb))
    return diffs


def check_compatible(state: Mapping, config: Mapping, path: Path) -> None:
    """Refuse to resume a state trained with another model or discriminator config, naming the key."""
    diffs = config_differences(state.get("config", {}), config)
    for key, default in FIXED_TRAIN_KEYS.items():
        old = (state.get("config", {}).get("train") or {}).get(key, default)
        new = (config.get("train") or {}).get(key, default)
        if old != new:
            diffs.append((f"train.{key}", old, new))
    if diffs:
        key, old, new = diffs[0]
        more = f" (and {len(diffs) - 1} more)" if len(diffs) > 1 else ""
        raise ResumeError(
            f"cannot resume from {path}: {key} differs (checkpoint {old!r}, config {new!r}){more}; "
            "nothing was written"
        )


# ---------------------------------------------------------------------------------------- RNG states


def capture_rng(device: torch.device) -> dict:
    """This process's global RNG states (torch CPU, CUDA, NumPy, Python) in a weights_only-safe form."""
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": int(py_version), "state": list(py_state), "gauss": py_gauss},
    }


def restore_rng(state: Mapping, device: torch.device) -> None:
    """Inverse of ``capture_rng``."""
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
