"""scripts/evaluate_run.py's body: metrics of every snapshot of a training run, appended to its log.jsonl,
then the curves re-plotted. Lives with training (it reads run directories and their logs); the metrics
themselves come from the registry."""

from __future__ import annotations

import logging
from pathlib import Path

from stylenat.data import dataset_path_or_demo
from stylenat.evaluation import data_label_pool
from stylenat.sampling import seeded_images_fn
from stylenat.training.sinks import metric_record

logger = logging.getLogger(__name__)


def run_real_data(run_dir: Path) -> str:
    """The real images a training run's metrics use: its config.yaml's dataset.path, or the demo faces."""
    from omegaconf import OmegaConf

    config_path = Path(run_dir) / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} does not exist: is {run_dir} a training run directory?")
    config = OmegaConf.load(config_path)
    path = OmegaConf.select(config, "dataset.path", default=None)
    if path is None:
        return str(dataset_path_or_demo(None, OmegaConf.select(config, "dataset.name", default=None)))
    if not Path(path).exists():
        raise FileNotFoundError(f"dataset path {path} (from {config_path}) does not exist")
    return str(path)


def logged_metric_positions(log_path: Path) -> set[tuple[int, str]]:
    """(position in images, metric name) of every metric record already in a run's log."""
    from stylenat.training.curves import read_log
    from stylenat.training.sinks import record_images

    if not Path(log_path).is_file():
        return set()
    return {
        (record_images(r), r["metric"])
        for r in read_log(log_path)
        if isinstance(r.get("metric"), str) and "event" not in r and record_images(r) is not None
    }


def evaluate_run(
    run_dir,
    metrics,
    *,
    num_gen: int | None = None,
    batch: int = 32,
    device: str = "auto",
    inception_weights=None,
    plot: bool = True,
    progress: bool = True,
) -> list[dict]:
    """Score every ``network-snapshot-*.pt`` of ``run_dir`` with ``metrics``; returns the new records.

    Each (snapshot, metric) pair not yet in ``run_dir/log.jsonl`` is computed as the training loop does
    (G_ema at truncation 1, seeds from 0, real statistics of the run's data set, cached) and appended in
    the loop's metric record shape, at the snapshot's position. Then ``curves.png`` is re-plotted
    (``plot``; a failure there is a warning: the records are already written).
    """
    from stylenat import metrics as registry
    from stylenat.distributed import resolve_device
    from stylenat.snapshot import CheckpointError, generator_from_snapshot, read_checkpoint
    from stylenat.training import checkpoint as ckpt
    from stylenat.training.curves import LOG_NAME, plot_run
    from stylenat.training.sinks import JsonlSink

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    if isinstance(metrics, str):
        metrics = [metrics]
    names = list(dict.fromkeys(registry.get_metric(m).name for m in metrics or []))
    if not names:
        raise ValueError(f"metrics is empty: name at least one of {', '.join(registry.available_metrics())}")
    snapshots = ckpt.list_artifacts(run_dir, ckpt.SNAPSHOT_PREFIX)
    if not snapshots:
        raise FileNotFoundError(f"no {ckpt.SNAPSHOT_PREFIX}*.pt in {run_dir}: nothing to evaluate")
    log_path = run_dir / LOG_NAME
    done = logged_metric_positions(log_path)
    todo = [(images, path, [n for n in names if (images, n) not in done]) for images, path in snapshots]
    todo = [(images, path, missing) for images, path, missing in todo if missing]
    skipped = len(snapshots) * len(names) - sum(len(missing) for _, _, missing in todo)
    logger.info(
        "%s: %d snapshot(s) x %d metric(s); %d already in %s, %d to compute",
        run_dir,
        len(snapshots),
        len(names),
        skipped,
        LOG_NAME,
        len(snapshots) * len(names) - skipped,
    )
    records: list[dict] = []
    if todo:
        real = run_real_data(run_dir)
        dev = resolve_device(str(device))
        extractor = registry.load_inception(inception_weights, device=dev)
        sink = JsonlSink(log_path)
        pool = None
        try:
            for images, path, missing in todo:
                snapshot = read_checkpoint(path)
                if not isinstance(snapshot, dict) or "model_config" not in snapshot:
                    raise CheckpointError(f"{path} is not a stylenat inference snapshot")
                G = generator_from_snapshot(snapshot, source=str(path)).eval().requires_grad_(False).to(dev)
                meta = snapshot.get("meta") or {}
                if G.c_dim and pool is None:  # as the loop: the data's labels, read once for the run
                    pool = data_label_pool(G, real)
                for name in missing:
                    result = registry.compute_metric(
                        name,
                        seeded_images_fn(G, dev, label_pool=pool),
                        extractor=extractor,
                        real_data=real,
                        num_gen=num_gen,
                        batch_size=batch,
                        device=dev,
                        progress=progress,
                    )
                    record = metric_record(
                        name,
                        result,
                        images,
                        meta.get("step"),
                        num_gen=result.get("num_gen"),
                        snapshot=path.name,
                    )
                    sink.log(record)
                    records.append(record)
                    logger.info(
                        "%s = %.4f at %.3f kimg (%s)", name, result["value"], images / 1000, path.name
                    )
        finally:
            sink.close()
    if plot:
        try:
            logger.info("curves: %s", plot_run(run_dir))
        except Exception as err:  # the records are written; the figure is a convenience
            logger.warning("could not plot the learning curves: %s: %s", type(err).__name__, err)
    return records
