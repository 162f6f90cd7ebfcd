"""The training config, parsed once: Hydra composes ``configs/`` (``stylenat.cli``), and ``parse_config``
turns the composed config into typed, checked objects before any data is read or network built.

Every check lives here and every failure is one line naming the Hydra key and its value. The models check
their own invariants in their own words (``GeneratorConfig.validate``, ``check_discriminator_config``);
their messages start with the field name, and this module prefixes the group (``model.``,
``discriminator.``) to name the key.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from stylenat.config_checks import ConfigError  # noqa: F401  (defined below every layer; training's name for it)
from stylenat.ops.checks import is_int, is_power_of_two

if TYPE_CHECKING:  # imported where used: `train.py --help` and config errors answer without torch
    from stylenat.models.generator import GeneratorConfig
    from stylenat.training.init import InitSource
    from stylenat.training.options import TrainOptions

log = logging.getLogger(__name__)

GROUPS = ("model", "discriminator", "train", "dataset", "logger")
AUTO = "auto"



@dataclass(frozen=True)
class DataConfig:
    """``dataset.*``: the training images."""

    name: str | None
    path: str | None  # folder, .zip or LMDB; None = the bundled demo faces
    resolution: int
    xflip: bool
    use_labels: str | bool = "auto"  # auto | True | False: the data set's dataset.json class labels
    class_names: tuple | None = None  # set from the data (``with_labels``), not a config key


@dataclass(frozen=True)
class DiscriminatorConfig:
    """``discriminator.*``: ``name`` picks the architecture, ``options`` are its keyword arguments."""

    name: str
    options: dict


@dataclass(frozen=True)
class LoggerConfig:
    """``logger.*``: where the figures of a run go besides log.jsonl."""

    progress: bool
    plots: bool
    wandb: dict | None


@dataclass(frozen=True)
class RunSettings:
    """The top-level keys: where the run lives and how it computes (none of it changes the weights' meaning)."""

    run_dir: str | None
    resume: str | None
    init: str | None  # the pretrained weights' file (training/init.py)
    seed: int
    device: str
    na_backend: str


@dataclass(frozen=True)
class TrainingConfig:
    """Everything a training run reads from its config, checked; ``resolved`` is the plain dict that
    config.yaml, the training state and W&B record (updated with what the run resolves: run_dir, autos)."""

    model: GeneratorConfig
    discriminator: DiscriminatorConfig
    train: TrainOptions
    data: DataConfig
    logger: LoggerConfig
    run: RunSettings
    resolved: dict = field(repr=False)
    init: InitSource | None = field(default=None, repr=False)  # the weights of ``init``, read once

    def with_train(self, train: TrainOptions) -> TrainingConfig:
        """The config with resolved ``train`` values (``auto`` R1 gamma / augmentation), also in ``resolved``."""
        resolved = {**self.resolved, "train": dict(self.resolved["train"])}
        from stylenat.training.options import AUTO_KEYS

        for key in AUTO_KEYS:
            resolved["train"][key] = getattr(train, key)
        return replace(self, train=train, resolved=resolved)

    def class_meta(self) -> dict:
        """What a conditional run's states and snapshots carry of its classes ({} when unconditional)."""
        if not self.model.c_dim:
            return {}
        names = self.data.class_names
        return {"class_names": None if names is None else list(names)}

    def with_labels(self, c_dim: int, class_names) -> TrainingConfig:
        """The config of a class-conditional run: ``model.c_dim`` (also in ``resolved``, so a resume checks
        it) and the class names, both from the data set."""
        resolved = {**self.resolved, "model": {**self.resolved["model"], "c_dim": c_dim}}
        names = None if class_names is None else tuple(class_names)
        return replace(
            self,
            model=replace(self.model, c_dim=c_dim),
            data=replace(self.data, class_names=names),
            resolved=resolved,
        )

    def with_run_dir(self, run_dir: str) -> TrainingConfig:
        return replace(
            self, run=replace(self.run, run_dir=run_dir), resolved={**self.resolved, "run_dir": run_dir}
        )


# Keys that moved out of a group: an old override gets one line saying where to.
MOVED_KEYS = {"model.na_backend": "na_backend", "model.checkpoint_blocks": "train.checkpoint_blocks"}


def check_moved_keys(overrides: list[str]) -> None:
    """Refuse an override of a key that moved (``model.na_backend=torch``), naming its new place."""
    for override in overrides:
        key = override.lstrip("+~").split("=", 1)[0]
        if key in MOVED_KEYS:
            raise ConfigError(
                f"{key} moved to {MOVED_KEYS[key]}: pass {override.replace(key, MOVED_KEYS[key], 1)}"
            )


def parse_config(cfg, world_size: int | None = None, overrides: list[str] | tuple = ()) -> TrainingConfig:
    """A composed (OmegaConf) or plain config -> ``TrainingConfig``; the one place every key is checked.

    ``world_size`` (default: env ``WORLD_SIZE``, else 1) is the number of processes ``train.batch`` is
    divided over. ``overrides``: the command line's, which ``init`` keeps when they keep its weights'
    shapes (see training/init.py). Paths are not opened here (a missing data set is reported by the data
    set itself), but for ``init`` (the model config is in the file) and ``dataset.resolution: auto``.
    """
    follows_data = _model_follows_data(cfg)
    config = resolve_config(cfg)
    for key in GROUPS:
        if not isinstance(config.get(key), dict):
            raise ConfigError(f"config group {key!r} is missing (compose configs/config.yaml)")
    run = _parse_run(config)
    from stylenat.training.options import TrainOptions

    train = TrainOptions.from_dict(config["train"])
    train.accumulation_rounds(env_world_size() if world_size is None else world_size)
    logger = _parse_logger(config["logger"])
    init = None
    if init_path(config.get("init")) is not None:
        from stylenat.training.init import apply_init, load_init_source

        init = load_init_source(init_path(config["init"]))
        config = apply_init(config, init, overrides)
    config = _resolve_data_resolution(config, follows_data and init is None)  # reads one image
    data = _parse_data(config["dataset"])
    model = _parse_model(config["model"], data, init, follows_data)
    discriminator = _parse_discriminator(config["discriminator"], data.resolution)
    if train.freeze_d:
        _check_freeze_d(train.freeze_d, discriminator, data.resolution)
    return TrainingConfig(model, discriminator, train, data, logger, run, config, init)


def resolve_config(cfg) -> dict:
    """A composed or plain config -> a resolved plain dict; missing values -> one-line errors."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as err:
        key = getattr(err, "full_key", None) or "a value"
        raise ConfigError(f"{key} is required: pass {key}=<value> on the command line") from None
    except InterpolationResolutionError as err:
        raise ConfigError(f"cannot resolve config: {str(err).splitlines()[0]}") from None


def env_world_size() -> int:
    """The number of training processes from the launcher's environment (``WORLD_SIZE``; 1 without torchrun)."""
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        world_size = int(raw)
    except ValueError:
        world_size = 0
    if world_size < 1:
        raise ConfigError(f"environment WORLD_SIZE={raw!r}: expected a positive integer")
    return world_size


def init_path(value) -> str | None:
    """The path of a config's ``init`` (a path, or the mapping a run's config.yaml records), or None."""
    if isinstance(value, dict):
        value = value.get("path")
    return None if value in (None, "") else str(value)


def _model_follows_data(cfg) -> bool:
    """Whether ``model.resolution`` is ``${dataset.resolution}`` (dataset=folder): the model follows the data."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        return "model" in cfg and OmegaConf.is_interpolation(cfg.model, "resolution")
    value = (cfg.get("model") or {}).get("resolution")
    return isinstance(value, str) and value.replace(" ", "") == "${dataset.resolution}"


def _resolve_data_resolution(config: dict, model_follows: bool) -> dict:
    """``dataset.resolution: auto`` -> the side of the data's images, as StyleGAN2-ADA reads it (its first
    image); the model takes it too when it follows the data (dataset=folder without init)."""
    if config["dataset"].get("resolution") != AUTO:
        return config
    from stylenat.data import DatasetError, dataset_path_or_demo
    from stylenat.data.reader import stored_size

    path = config["dataset"].get("path")
    try:
        width, height, name = stored_size(dataset_path_or_demo(path))
    except DatasetError as err:
        raise ConfigError(f"dataset.resolution=auto: {err}") from None
    if width != height or not is_power_of_two(width, minimum=8):
        raise ConfigError(
            f"dataset.resolution=auto: {path} holds {width}x{height} images (e.g. {name}), not a square power "
            "of two >= 8: pass dataset.resolution=<power of two> to center-crop and resize them"
        )
    log.info("dataset.resolution=auto -> %d (%s holds %dx%d images)", width, path or "the demo", width, width)
    config = {**config, "dataset": {**config["dataset"], "resolution": width}}
    if model_follows or config["model"].get("resolution") == AUTO:
        config["model"] = {**config["model"], "resolution": width}
    return config


def _data_note(data: DataConfig) -> str:
    """What the data holds, for a resolution mismatch message (best effort: one image is read)."""
    if data.path is None:
        return "the demo faces"
    try:
        from stylenat.data.reader import stored_size

        width, height, _ = stored_size(data.path)
    except Exception:  # the message must not fail; the data set reports its own problems later
        return str(data.path)
    return f"{data.path} holds {width}x{height} images"


def _check_resolution(key: str, value) -> int:
    if value is None:
        raise ConfigError(f"{key} is required: pass {key}=<power of two>")
    if not is_power_of_two(value, minimum=8):
        raise ConfigError(f"{key}={value!r}: expected a power of two >= 8")
    return value


def _parse_data(data: dict) -> DataConfig:
    resolution = _check_resolution("dataset.resolution", data.get("resolution"))
    path = data.get("path")
    if path is not None and (not isinstance(path, str) or not path.strip()):
        raise ConfigError(
            f"dataset.path={path!r}: expected a folder, .zip or LMDB path (or null for the demo)"
        )
    xflip = data.get("xflip", False)
    if not isinstance(xflip, bool):
        raise ConfigError(f"dataset.xflip={xflip!r}: expected true or false")
    use_labels = data.get("use_labels", "auto")
    if not (use_labels == "auto" or isinstance(use_labels, bool)):
        raise ConfigError(f"dataset.use_labels={use_labels!r}: expected auto, true or false")
    return DataConfig(data.get("name"), path, resolution, xflip, use_labels)


def _parse_model(model: dict, data: DataConfig, init: InitSource | None, follows_data: bool):
    from stylenat.models.generator import GeneratorConfig

    model_resolution = _check_resolution("model.resolution", model.get("resolution"))
    if init is not None and data.resolution != model_resolution:
        raise ConfigError(
            f"dataset.resolution={data.resolution} ({_data_note(data)}) does not match the model of "
            f"init={init.path} (model.resolution={model_resolution}): train on {model_resolution}x"
            f"{model_resolution} images (dataset.resolution={model_resolution} resizes them)"
        )
    if data.resolution != model_resolution:
        raise ConfigError(
            f"dataset.resolution={data.resolution} does not match model.resolution={model_resolution} "
            f"({_data_note(data)}): pick a model of that resolution or set dataset.resolution"
        )
    channels = model.get("channels")
    stages = int(math.log2(model_resolution)) - 1
    if follows_data and isinstance(channels, (list, tuple)) and channels and len(channels) != stages:
        size = 4 * 2 ** (len(channels) - 1)
        raise ConfigError(
            f"dataset.resolution={data.resolution} ({_data_note(data)}) does not fit the model: "
            f"model.channels={list(channels)} has {len(channels)} stages, a {size}x{size} model "
            f"(model.resolution follows dataset.resolution): pass dataset.resolution=auto or {size}"
        )
    for key in ("kernels", "dilations", "channels"):  # the shapes from_dict needs to reshape them
        v = model.get(key)
        if v is None and key == "channels":
            continue
        if not isinstance(v, (list, tuple)):
            raise ConfigError(f"model.{key}={v!r}: expected a list with one entry per stage (4x4 first)")
        if key != "channels":
            for i, entry in enumerate(v):
                if not (is_int(entry) or isinstance(entry, (list, tuple))):
                    raise ConfigError(
                        f"model.{key}[{i}]={entry!r}: expected an integer or a list of integers"
                    )
    try:
        config = GeneratorConfig.from_dict(model)
        config.validate()
    except ValueError as err:
        raise ConfigError(_in_group("model", err)) from None
    return config


def _parse_discriminator(disc: dict, resolution: int) -> DiscriminatorConfig:
    from stylenat.models.discriminator import check_discriminator_config

    try:
        check_discriminator_config(disc, resolution)
    except ValueError as err:
        raise ConfigError(_in_group("discriminator", err)) from None
    options = dict(disc)
    return DiscriminatorConfig(str(options.pop("name", "wavelet")), options)


def _check_freeze_d(count: int, disc: DiscriminatorConfig, resolution: int) -> None:
    """train.freeze_d may freeze at most D's blocks (one per resolution level: ``D.blocks()``)."""
    import torch

    from stylenat.models.build import build_discriminator

    with torch.device("meta"):  # the structure only: no memory, no compute
        blocks = len(build_discriminator({"name": disc.name, **disc.options}, resolution).blocks())
    if count > blocks:
        raise ConfigError(
            f"train.freeze_d={count}: the {disc.name} discriminator at {resolution} px has {blocks} blocks "
            "(one per resolution level, from the image side; the 4x4 head is never frozen)"
        )


def _in_group(group: str, err: ValueError) -> str:
    """A model's own message (it starts with the field name) as one naming the Hydra key."""
    message = str(err)
    return message if message.startswith(f"{group}.") else f"{group}.{message}"


def _parse_run(config: dict) -> RunSettings:
    seed = config.get("seed", 0)
    if not is_int(seed) or not 0 <= seed < 2**32:
        raise ConfigError(f"seed={seed!r}: expected an integer in [0, 2**32)")
    from stylenat.distributed import DEVICES
    from stylenat.ops.na import NA_BACKENDS

    device = config.get("device", "auto")
    if device not in DEVICES:
        raise ConfigError(f"device={device!r}: expected one of {', '.join(DEVICES)}")
    na_backend = config.get("na_backend", "auto")
    if na_backend not in NA_BACKENDS:
        raise ConfigError(f"na_backend={na_backend!r}: expected one of {', '.join(NA_BACKENDS)}")
    resume = config.get("resume")
    return RunSettings(
        run_dir=config.get("run_dir"),
        resume=None if resume in (None, "") else str(resume),
        init=init_path(config.get("init")),
        seed=seed,
        device=device,
        na_backend=na_backend,
    )


def _parse_logger(logger: dict) -> LoggerConfig:
    for key in ("progress", "plots"):
        if not isinstance(logger.get(key, True), bool):
            raise ConfigError(f"logger.{key}={logger.get(key)!r}: expected true or false")
    wandb = logger.get("wandb")
    if wandb is not None and not isinstance(wandb, dict):
        raise ConfigError(f"logger.wandb={wandb!r}: expected a mapping of W&B settings or null")
    return LoggerConfig(bool(logger.get("progress", True)), bool(logger.get("plots", True)), wandb)
