"""Before a run writes anything: the config parsed, the state to resume found and checked, the data set
opened and the ``auto`` values resolved (``prepare_run``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from stylenat import distributed as dist
from stylenat.training import checkpoint as ckpt
from stylenat.training.config import TrainingConfig, parse_config
from stylenat.training.options import AUTO_KEYS

log = logging.getLogger(__name__)


@dataclass
class RunSetup:
    """Everything checked before the first file is written."""

    config: TrainingConfig
    env: dist.DistEnv
    run_dir: Path
    resume_path: Path | None
    state: dict | None
    dataset: object | None
    unreadable_states: list[Path] = field(default_factory=list)  # newer states skipped as unreadable


def prepare_run(config, env: dist.DistEnv, with_data: bool = True) -> RunSetup:
    """Find and check the state to resume, open the data set, resolve ``auto`` values; writes nothing.

    ``config``: a ``TrainingConfig``, or a composed config (parsed here). ``with_data=False`` skips the
    data set (benchmarks that feed their own batches).
    """
    if not isinstance(config, TrainingConfig):
        config = parse_config(config, env.world_size)
    config.train.accumulation_rounds(env.world_size)  # train.batch over this many processes
    run_dir = dist.broadcast_object(config.run.run_dir)  # ${now:...} may differ between ranks
    if not run_dir:
        raise ValueError("run_dir is required: pass run_dir=<directory>")
    config = config.with_run_dir(str(run_dir))
    run_dir = Path(run_dir).expanduser()
    resume_path, state, unreadable = ckpt.load_resume_state(config.run.resume, run_dir)
    dataset = build_training_dataset(config) if with_data else None
    config = resolve_labels(config, dataset)
    if state is not None:  # after the labels: model.c_dim comes from the data
        ckpt.check_compatible(state, config.resolved, resume_path)
        if config.init is not None:
            _log_resume_wins(config, state, resume_path)
    config = resolve_auto_options(config, dataset)
    return RunSetup(config, env, run_dir, resume_path, state, dataset, unreadable)


def resolve_labels(config: TrainingConfig, dataset) -> TrainingConfig:
    """``model.c_dim`` (and the class names) from the data set's labels: a class-conditional run when it
    uses labels (``dataset.use_labels``), unconditional and unchanged otherwise."""
    c_dim = getattr(dataset, "c_dim", 0) if dataset is not None else 0
    if config.init is not None and dataset is not None and config.model.c_dim != c_dim:
        raise ValueError(
            f"model.c_dim={config.model.c_dim} (from init={config.init.path}): the data set {dataset.path} "
            f"has {c_dim} classes; fine-tune on data with the same classes"
            + (" or set dataset.use_labels=false" if not config.model.c_dim else "")
        )
    if config.model.c_dim and config.model.c_dim != c_dim:
        raise ValueError(
            f"model.c_dim={config.model.c_dim}: the data set has {c_dim} classes (c_dim is set from its "
            "labels; leave it out)"
        )
    if not c_dim:
        return config
    names = dataset.class_names
    log.info(
        "class-conditional: %d classes from %s (%s)",
        c_dim,
        dataset.path,
        ", ".join(names) if names else "unnamed",
    )
    return config.with_labels(c_dim, names)


def resolve_auto_options(config: TrainingConfig, dataset) -> TrainingConfig:
    """Replace ``auto`` train values (R1 gamma, augmentation) once the data set's size is known; the
    resolved values go into the run's config (config.yaml, the training state) and the log."""
    num_images = getattr(dataset, "num_images", None)
    resolution, fine_tune = config.model.resolution, config.init is not None
    resolved = config.train.resolve_auto(resolution, num_images, fine_tune=fine_tune)
    for key in AUTO_KEYS:
        before, after = getattr(config.train, key), getattr(resolved, key)
        if before != after:
            why = (
                f"{'init is set: fine-tuning' if fine_tune else 'no init: training from scratch'}"
                if key == "ada_kimg"
                else f"{num_images} images at {resolution} px"
            )
            log.info("train.%s=auto -> %s (%s)", key, after, why)
    return config.with_train(resolved)


def _log_resume_wins(config: TrainingConfig, state: dict, resume_path: Path) -> None:
    """A run dir that holds a state resumes it: ``init`` only chose the first run's weights."""
    log.info(
        "resuming from %s: a training state wins over init=%s (its weights started this run)",
        resume_path,
        config.init.path,
    )
    recorded = (state.get("config") or {}).get("init") or {}
    if isinstance(recorded, dict) and recorded.get("sha256") not in (None, config.init.sha256):
        log.warning(
            "init=%s (sha256 %s) is not the file this run started from (%s, sha256 %s); the state wins",
            config.init.path,
            config.init.sha256[:12],
            recorded.get("path"),
            recorded["sha256"][:12],
        )


def build_training_dataset(config: TrainingConfig):
    """The data set of ``dataset.*`` (the demo faces when dataset.path is null), in G's pixel space."""
    from stylenat.data import build_dataset, dataset_path_or_demo

    # the demo (or the two-class demo) is built concurrency-safely by every rank
    return build_dataset(
        dataset_path_or_demo(config.data.path, config.data.name),
        config.data.resolution,
        normalize=config.model.output_normalization,
        xflip=config.data.xflip,
        use_labels=config.data.use_labels,
    )
