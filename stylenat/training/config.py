"""Composing the training config from configs/ with Hydra's compose API, and the ``train.py`` command line.

The compose API (rather than ``@hydra.main``) keeps every failure to one line: Hydra's own composition
errors become ``ConfigError`` (a ValueError, so ``stylenat.cli.user_errors_to_exit`` prints it), and the
run dir is ours (``run_dir``), identical on every torchrun rank, with no ``.hydra/`` or cwd change.
"""

from __future__ import annotations

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


def check_config(config: dict) -> None:
    """Cross-group checks Hydra cannot express."""
    for key in ("model", "discriminator", "train", "dataset", "logger"):
        if not isinstance(config.get(key), dict):
            raise ValueError(f"config group {key!r} is missing (compose configs/config.yaml)")
    data_res, model_res = config["dataset"].get("resolution"), config["model"].get("resolution")
    if data_res != model_res:
        raise ValueError(
            f"dataset.resolution={data_res} does not match model.resolution={model_res}: "
            "pick a model of that resolution or set dataset.resolution"
        )


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
    check_config(resolve_config(cfg))  # fail fast, before torch is imported
    from tqdm.contrib.logging import logging_redirect_tqdm

    from stylenat.training.distributed import env_rank
    from stylenat.training.loop import train

    setup_logging(env_rank())
    with logging_redirect_tqdm():
        train(cfg)
    return 0


def default_config_dir() -> Path:
    """configs/ next to the package (a source checkout or an editable install); $STYLENAT_CONFIGS overrides."""
    env = os.environ.get("STYLENAT_CONFIGS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "configs"
