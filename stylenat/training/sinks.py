"""Where training figures go: ``log.jsonl`` (always), Weights & Biases (``logger=wandb``), a tqdm bar.

Only rank 0 creates sinks. Records are flat dicts of JSON-serialisable values; every sink gets the same.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

from stylenat.files import atomic_write_text

log = logging.getLogger(__name__)

WANDB_MODES = ("online", "offline", "disabled")


class JsonlSink:
    """Appends one JSON object per record to a file, flushed at once (a crash loses nothing logged).

    ``keep_through_images``: on a resume, records past the resumed position (written after the state
    was saved, by the run that died) and a torn last line are dropped first, so the resumed run writes
    each record exactly once.
    """

    def __init__(self, path: Path, keep_through_images: int | None = None):
        self.path = Path(path)
        if keep_through_images is not None and self.path.is_file():
            truncate_log(self.path, keep_through_images)
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def log(self, record: Mapping) -> None:
        self._fh.write(json.dumps(dict(record), sort_keys=False) + "\n")
        self._fh.flush()

    def log_image(self, path: Path, step: int) -> None:
        """Images stay in the run dir; nothing to add to the log."""

    def log_figure(self, path: Path, step: int) -> None:
        """The curves stay in the run dir too."""

    def close(self, failed: bool = False) -> None:
        self._fh.close()


def metric_record(name: str, result: Mapping, images_seen: int, step: int | None, **extra) -> dict:
    """The log record of one metric result at a training position (training-time and evaluate_run alike)."""
    return {
        "kimg": images_seen / 1000,
        "step": step,
        "timestamp": time.time(),
        "metric": name,
        name: result["value"],
        "protocol": result.get("protocol"),
        "metric_time_s": result.get("time_s"),
        **{
            key: result[key] for key in ("precision", "recall") if key in result
        },  # pr*: value is the precision
        **extra,
    }


def record_images(record: Mapping) -> int | None:
    """The training position of a log record, in images."""
    if "images_seen" in record:
        return int(record["images_seen"])
    if "kimg" in record:
        return int(round(float(record["kimg"]) * 1000))
    return None


def truncate_log(path: Path, keep_through_images: int) -> int:
    """Rewrite ``path`` (atomically) without records past ``keep_through_images`` or torn lines; returns
    how many lines were dropped."""
    kept, dropped = [], 0
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        position = record_images(record) if isinstance(record, dict) else None
        if position is not None and position > keep_through_images:
            dropped += 1
            continue
        kept.append(line)
    if dropped:
        atomic_write_text(path, "".join(f"{line}\n" for line in kept))
        log.info("%s: dropped %d record(s) past the resumed position", Path(path).name, dropped)
    return dropped


class WandbSink:
    """Mirrors records (and, optionally, sample grids) to a W&B run; resumes the same run id on restart."""

    def __init__(self, cfg: Mapping, run_dir: Path, config: Mapping, run_id: str | None = None):
        import wandb

        mode = cfg.get("mode") or os.environ.get("WANDB_MODE") or "online"
        if mode not in WANDB_MODES:
            raise ValueError(f"logger.wandb.mode={mode!r} is not one of {', '.join(WANDB_MODES)}")
        directory = cfg.get("dir") or os.environ.get("WANDB_DIR") or str(run_dir)
        Path(directory).mkdir(parents=True, exist_ok=True)
        self._wandb = wandb
        self.log_images = bool(cfg.get("log_images", True))
        self.run = wandb.init(
            project=cfg.get("project"),
            entity=cfg.get("entity"),
            name=cfg.get("name") or Path(run_dir).name,
            group=cfg.get("group"),
            tags=list(cfg.get("tags") or []),
            mode=mode,
            dir=directory,
            config=dict(config),
            id=run_id,
            resume="allow" if run_id else None,
        )
        self.run_id = self.run.id
        log.info("wandb run %s (%s) in %s", self.run_id, mode, directory)

    def log(self, record: Mapping) -> None:
        self.run.log(
            {k: v for k, v in record.items() if isinstance(v, (int, float))}, step=int(record["step"])
        )

    def log_image(self, path: Path, step: int) -> None:
        if self.log_images:
            self.run.log({"samples": self._wandb.Image(str(path), caption=Path(path).name)}, step=step)

    def log_figure(self, path: Path, step: int) -> None:
        """The learning curves (``curves.png``), always (``logger.plots`` decides whether they exist)."""
        self.run.log({"curves": self._wandb.Image(str(path), caption=Path(path).name)}, step=step)

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class Progress:
    """tqdm bar in kimg on rank 0 (stderr); shows the latest losses as its postfix.

    ``total_kimg`` is where the run really ends (``TrainOptions.end_images``). The bar counts whole
    images and shows them scaled to kimg, so float sums never overshoot the total (no TqdmWarning,
    no negative ETA).
    """

    def __init__(self, total_kimg: float, start_kimg: float, enabled: bool = True):
        from tqdm import tqdm

        self.total = _images(total_kimg)
        self._images = min(_images(start_kimg), self.total)
        self.bar = tqdm(
            total=self.total,
            initial=self._images,
            unit="kimg",
            unit_scale=0.001,
            dynamic_ncols=True,
            mininterval=1.0,
            disable=not enabled,
            bar_format="{l_bar}{bar}| {n:.3f}/{total:.3f} kimg [{elapsed}<{remaining}{postfix}]",
        )

    def update(self, kimg: float, postfix: Mapping | None = None) -> None:
        images = min(_images(kimg), self.total)
        self.bar.update(images - self._images)
        self._images = images
        if postfix:
            self.bar.set_postfix(
                {k: f"{v:.3g}" for k, v in postfix.items() if isinstance(v, float)}, refresh=False
            )

    def close(self) -> None:
        self.bar.close()


def _images(kimg: float) -> int:
    return int(round(kimg * 1000))


def file_log_handler(run_dir: Path) -> logging.Handler:
    """A handler copying this process's log messages to ``run_dir/train.log`` (caller attaches/detaches)."""
    handler = logging.FileHandler(Path(run_dir) / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    return handler
