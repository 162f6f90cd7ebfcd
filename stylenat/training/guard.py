"""What keeps a long run alive: stop signals handled at step boundaries, the divergence guard, and the
checks that a run directory can take the next checkpoint.

* ``StopSignals``: SIGTERM / SIGINT (what schedulers send before pre-emption, and Ctrl-C) only set a
  flag; the loop saves a training state at the next step boundary and returns normally (exit 0). A
  second Ctrl-C interrupts at once.
* ``RollbackPoint``: a copy of everything one step changes (G, D, G_ema, both optimizers, the loss
  sums), refreshed before every step into preallocated buffers, so a non-finite step can be undone
  exactly. It costs one extra copy of the training state in device memory (``train.nonfinite=off``
  skips it).
* ``check_run_dir``: before training, the run directory must be writable and hold room for the next
  training state; a failed save (disk full) raises ``CheckpointWriteError`` and leaves the previous
  state intact (``stylenat.files.atomic_save`` never replaces a file with a partial one).
"""

from __future__ import annotations

import logging
import shutil
import signal
import tempfile
import threading
from pathlib import Path

import torch

log = logging.getLogger(__name__)

NONFINITE_ACTIONS = ("stop", "rollback", "off")


class DivergenceError(ValueError):
    """Training produced a non-finite loss or weight; the message names what, where and what was saved."""


class CheckpointWriteError(ValueError):
    """A checkpoint could not be written (disk full, unwritable directory); the previous one is intact."""


# --------------------------------------------------------------------------------------- stop signals


class StopSignals:
    """Context manager: SIGTERM and SIGINT request a stop at the next step boundary instead of killing.

    Only installed in the main thread (signal handlers cannot be set elsewhere); the previous handlers
    come back on exit. ``requested`` holds the signal's name once one arrived.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested: str | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait
        self.requested = name
        log.warning("received %s: saving a training state at the end of this step, then exiting", name)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


# -------------------------------------------------------------------------------------- rollback point


class RollbackPoint:
    """Device copies of the tensors a training step changes, to undo a step exactly.

    ``modules`` are copied through their state dicts (parameters and buffers such as ``w_avg``),
    ``optimizers`` through their per-parameter state (Adam's moments and step counts; an optimizer
    without state yet is simply cleared on restore), ``extra`` are plain tensors (the loss sums).
    """

    def __init__(self, modules, optimizers, extra=()):
        self.modules, self.optimizers, self.extra = list(modules), list(optimizers), list(extra)
        self._copies: list[torch.Tensor] | None = None
        self._had_state: list[bool] = []

    def _tensors(self, had_state: list[bool]) -> list[torch.Tensor]:
        tensors = [t for m in self.modules for t in m.state_dict(keep_vars=True).values()]
        for opt, has in zip(self.optimizers, had_state):
            if has:
                for state in opt.state.values():
                    tensors.extend(v for v in state.values() if isinstance(v, torch.Tensor))
        tensors.extend(self.extra)
        return [t.detach() for t in tensors]

    @torch.no_grad()
    def capture(self) -> None:
        had_state = [len(opt.state) > 0 for opt in self.optimizers]
        tensors = self._tensors(had_state)
        same = (
            self._copies is not None
            and had_state == self._had_state
            and len(tensors) == len(self._copies)
            and all(a.shape == b.shape and a.dtype == b.dtype for a, b in zip(tensors, self._copies))
        )
        if same:
            torch._foreach_copy_(self._copies, tensors)
        else:
            self._copies = [t.clone() for t in tensors]
            self._had_state = had_state

    @torch.no_grad()
    def restore(self) -> None:
        if self._copies is None:
            raise RuntimeError("RollbackPoint.restore() before capture()")
        for opt, had in zip(self.optimizers, self._had_state):
            if not had:
                opt.state.clear()
        torch._foreach_copy_(self._tensors(self._had_state), self._copies)


def nonfinite_report(named_losses: dict[str, torch.Tensor], modules: dict[str, torch.nn.Module]) -> str:
    """What is non-finite, for the message (slow path: only called once something is)."""
    bad = [name for name, value in named_losses.items() if not torch.isfinite(value).all()]
    for module_name, module in modules.items():
        for name, p in module.named_parameters():
            if not torch.isfinite(p).all():
                bad.append(f"{module_name}.{name}")
                break
    return ", ".join(bad) if bad else "a non-finite value"


def all_finite(tensors: list[torch.Tensor]) -> torch.Tensor:
    """A 0-d bool tensor on the tensors' device: True when every element of every tensor is finite.

    One fused norm per tensor list (a NaN or inf anywhere makes the norm non-finite), no host sync.
    """
    norms = torch._foreach_norm([t.detach() for t in tensors])
    return torch.isfinite(torch.stack([n.float() for n in norms])).all()


# ------------------------------------------------------------------------------------------ run dir


def check_run_dir(run_dir: Path, need_bytes: int) -> None:
    """The run dir exists or can be made, takes a file, and has room for ``need_bytes``; else a one-line
    CheckpointWriteError naming the directory and what to do."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir, prefix=".write-check-"):
            pass
    except OSError as err:
        raise CheckpointWriteError(
            f"run_dir={run_dir} is not writable ({err.strerror or err}): pick another run_dir"
        ) from None
    free = shutil.disk_usage(run_dir).free
    if free < need_bytes:
        raise CheckpointWriteError(
            f"run_dir={run_dir} has {free / 2**20:.0f} MB free but a training state needs about "
            f"{need_bytes / 2**20:.0f} MB: free some space or pick another run_dir"
        )


def state_bytes(modules) -> int:
    """Rough size of a training state: the modules' tensors plus Adam's two moments per trainable one."""
    total = 0
    for m in modules:
        for t in m.state_dict().values():
            total += t.numel() * t.element_size()
    trainable = sum(p.numel() * p.element_size() for m in modules for p in m.parameters() if p.requires_grad)
    return int(total + 2 * trainable)


def clean_stale_temp_files(run_dir: Path) -> list[Path]:
    """Remove the temporary files of saves that a kill interrupted (``.<name>.<random>.tmp``)."""
    removed = []
    for p in Path(run_dir).glob(".*.tmp"):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    if removed:
        log.info("removed %d temporary file(s) of an interrupted save", len(removed))
    return removed
