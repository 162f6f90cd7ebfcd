"""Composing the training config from configs/ with Hydra's compose API, and the ``train.py`` command line.

The compose API (rather than ``@hydra.main``) keeps every failure to one line: Hydra's own composition
errors become ``ConfigError`` (a ValueError, so ``stylenat.cli.user_errors_to_exit`` prints it), and the
run dir is ours (``run_dir``), identical on every torchrun rank, with no ``.hydra/`` or cwd change.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path

USAGE = """\
usage: python train.py [group=option ...] [key=value ...] [--cfg] [--help]
       torchrun --nproc_per_node=N train.py [...]

Hydra override syntax: `dataset=ffhq256 dataset.path=/data/ffhq run_dir=runs/x train.total_kimg=100`.
  --cfg     print the composed config and exit
  --help    this text
Config groups (configs/<group>/<option>.yaml):
{groups}
Keys are documented in configs/config.yaml and in each group's YAML files."""


class ConfigError(ValueError):
    """A config that cannot be composed (unknown group option or key, bad override syntax)."""


def _one_line(err: Exception) -> str:
    """Hydra's multi-line composition messages -> one line (search-path listings dropped)."""
    text, options = [], []
    collecting = False
    for line in (s.strip() for s in str(err).splitlines()):
        if not line or line.startswith("See https://hydra.cc"):
            continue
        if line.startswith("Config search path"):
            break
        if line.startswith("Available options"):
            collecting = True
            continue
        (options if collecting else text).append(line)
    msg = " ".join(text) or type(err).__name__
    return f"{msg} (available: {', '.join(options)})" if options else msg


def compose_config(config_dir: Path, overrides: list[str], config_name: str = "config"):
    """Compose ``config_name`` from ``config_dir`` with command-line style overrides."""
    import hydra.core.utils  # noqa: F401  (registers the ${now:...} resolver)
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base=None):
            return compose(config_name=config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(_one_line(err)) from None


def resolve_config(cfg) -> dict:
    """A composed (OmegaConf) or plain config -> a resolved plain dict; missing values -> one-line errors."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as err:
        key = getattr(err, "full_key", None) or "a value"
        raise ValueError(f"{key} is required: pass {key}=<value> on the command line") from None
    except InterpolationResolutionError as err:
        raise ValueError(f"cannot resolve config: {str(err).splitlines()[0]}") from None


def env_world_size() -> int:
    """The number of training processes from the launcher's environment (``WORLD_SIZE``; 1 without torchrun)."""
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        world_size = int(raw)
    except ValueError:
        world_size = 0
    if world_size < 1:
        raise ValueError(f"environment WORLD_SIZE={raw!r}: expected a positive integer")
    return world_size


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_resolution(key: str, value) -> int:
    if value is None:
        raise ValueError(f"{key} is required: pass {key}=<power of two>")
    if not _is_int(value) or value < 8 or value & (value - 1):
        raise ValueError(f"{key}={value!r}: expected a power of two >= 8")
    return value


def _check_list_keys(model: dict) -> None:
    """The shapes ``GeneratorConfig.from_dict`` needs before it can reshape the per-stage lists."""
    for key in ("kernels", "dilations", "channels"):
        v = model.get(key)
        if v is None and key == "channels":
            continue
        if not isinstance(v, (list, tuple)):
            raise ValueError(f"model.{key}={v!r}: expected a list with one entry per stage (4x4 first)")
        if key != "channels":
            for i, entry in enumerate(v):
                if not (_is_int(entry) or isinstance(entry, (list, tuple))):
                    raise ValueError(f"model.{key}[{i}]={entry!r}: expected an integer or a list of integers")


def check_config(config: dict, world_size: int | None = None) -> None:
    """Check the types and ranges of the main keys before any data is read or network built.

    Every failure is a one-line ``ValueError`` naming the key and its value. Covers: the groups exist;
    ``dataset.resolution`` == ``model.resolution``, a power of two >= 8; ``dataset.path`` / ``xflip``;
    ``seed``, ``device``; every ``train`` key (``TrainOptions``), with ``train.batch`` divisible over
    ``world_size`` processes (default: env ``WORLD_SIZE``, else 1); the generator (``GeneratorConfig``:
    per-stage kernel x dilation within each feature map, heads, ...) and the discriminator keys. Paths
    are not opened here: a missing data set is reported later, by the data set itself.
    """
    for key in ("model", "discriminator", "train", "dataset", "logger"):
        if not isinstance(config.get(key), dict):
            raise ValueError(f"config group {key!r} is missing (compose configs/config.yaml)")
    data, model = config["dataset"], config["model"]
    data_res = _check_resolution("dataset.resolution", data.get("resolution"))
    model_res = _check_resolution("model.resolution", model.get("resolution"))
    if data_res != model_res:
        raise ValueError(
            f"dataset.resolution={data_res} does not match model.resolution={model_res}: "
            "pick a model of that resolution or set dataset.resolution"
        )
    path = data.get("path")
    if path is not None and (not isinstance(path, str) or not path.strip()):
        raise ValueError(
            f"dataset.path={path!r}: expected a folder, .zip or LMDB path (or null for the demo)"
        )
    if not isinstance(data.get("xflip", False), bool):
        raise ValueError(f"dataset.xflip={data.get('xflip')!r}: expected true or false")
    seed = config.get("seed", 0)
    if not _is_int(seed) or not 0 <= seed < 2**32:
        raise ValueError(f"seed={seed!r}: expected an integer in [0, 2**32)")

    from stylenat.distributed import DEVICES
    from stylenat.training.options import TrainOptions

    device = config.get("device", "auto")
    if device not in DEVICES:
        raise ValueError(f"device={device!r}: expected one of {', '.join(DEVICES)}")

    opts = TrainOptions.from_dict(config["train"])
    opts.accumulation_rounds(env_world_size() if world_size is None else world_size)

    from stylenat.models.discriminator import check_discriminator_config
    from stylenat.models.generator import GeneratorConfig

    _check_list_keys(model)
    GeneratorConfig.from_dict(model).validate()
    check_discriminator_config(config["discriminator"], model_res)


def _groups(config_dir: Path) -> str:
    lines = []
    for group in sorted(p for p in Path(config_dir).iterdir() if p.is_dir()):
        options = sorted(f.stem for f in group.glob("*.yaml"))
        lines.append(f"  {group.name}: {' | '.join(options)}")
    return "\n".join(lines)


def setup_logging(rank: int) -> None:
    """INFO on rank 0, warnings only elsewhere, to stderr."""
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@contextlib.contextmanager
def console_above_progress():
    """While the tqdm bar is shown, console log records and Python warnings print above it, not through it.

    The root logger's stderr/stdout handlers write through ``tqdm.write`` (which clears and redraws the
    bar); warnings go through logging (``py.warnings``), so they take the same path. Handlers to files
    (``train.log``) are left alone.
    """
    from tqdm.contrib.logging import logging_redirect_tqdm

    logging.captureWarnings(True)
    try:
        with logging_redirect_tqdm():
            yield
    finally:
        logging.captureWarnings(False)


def cli_main(config_dir: Path, argv: list[str]) -> int:
    """``train.py``: parse flags, compose, train. Returns the exit status."""
    flags = [a for a in argv if a.startswith("-")]
    overrides = [a for a in argv if not a.startswith("-")]
    unknown = [f for f in flags if f not in ("-h", "--help", "--cfg")]
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]} (see --help)")
    if "-h" in flags or "--help" in flags:
        print(USAGE.format(groups=_groups(config_dir)))
        return 0
    cfg = compose_config(config_dir, overrides)
    if "--cfg" in flags:
        from omegaconf import OmegaConf

        print(OmegaConf.to_yaml(cfg))
        return 0
    check_config(resolve_config(cfg))  # fail fast: before any data is read or network built
    from stylenat.distributed import env_rank
    from stylenat.training.loop import train

    setup_logging(env_rank())
    with console_above_progress():
        train(cfg)
    return 0


def default_config_dir() -> Path:
    """configs/ next to the package (a source checkout or an editable install); $STYLENAT_CONFIGS overrides."""
    env = os.environ.get("STYLENAT_CONFIGS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "configs"
