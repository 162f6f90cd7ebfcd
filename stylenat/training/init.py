"""Starting a run from pretrained weights (``init=PATH``): which files are accepted, what each gives, and
how the run's config follows the file.

Accepted files and what they give (only weights: optimizers, counters, schedule and RNG start fresh):

  our inference snapshot          G_ema -> G and G_ema; D fresh (built from the ``discriminator`` config)
  our training state              G, D, G_ema and the D config it was trained with
  an official StyleNAT checkpoint converted on the fly (``stylenat.reference``): G (its ``g``, else
                                  ``g_ema``), G_ema, and D with its config when the file holds ``d``
  convert_checkpoint.py's ``.train.pt``   G, G_ema, D and D's config

The model config comes from the file (and D's, when the file holds D). A command-line override of one of
their keys is kept only when every weight keeps its shape (``model.lr_mlp``); else it is one line naming
the key and both values. Labels / class conditioning are not handled here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

REFERENCE_WEIGHTS_FORMAT = "stylenat.reference-weights"  # convert_checkpoint.py --training-state
OVERRIDABLE_GROUPS = ("model", "discriminator")


class InitError(ValueError):
    """An ``init`` file or override that cannot start the run; the message names the key and the file."""


@dataclass(frozen=True)
class InitSource:
    """The weights (and configs) of an ``init`` file, read once when the config is parsed."""

    path: str
    sha256: str
    kind: str  # snapshot | training state | official checkpoint | converted .train.pt
    model_config: dict
    discriminator_config: dict | None  # None: the file holds no D (a fresh one is built)
    G: dict = field(repr=False)
    G_ema: dict = field(repr=False)
    D: dict | None = field(repr=False)

    @property
    def record(self) -> dict:
        """What the run's config.yaml, its states and its snapshots record about the file."""
        return {"path": self.path, "sha256": self.sha256, "kind": self.kind}


def load_init_source(path) -> InitSource:
    """Read an ``init`` file of any accepted kind; every failure is one line naming ``init`` and the file."""
    from stylenat.files import sha256_file
    from stylenat.reference import read_reference_checkpoint
    from stylenat.snapshot import CheckpointError

    p = Path(str(path)).expanduser().resolve()
    if not p.is_file():
        raise InitError(
            f"init={path}: no such file (expected a snapshot, a training state or an official checkpoint)"
        )
    try:
        data = read_reference_checkpoint(p)
        return _source_from(data, str(p), sha256_file(p))
    except CheckpointError as err:
        raise InitError(f"init={path}: {err}") from None


def _source_from(data, path: str, sha256: str) -> InitSource:
    from stylenat.reference import (
        is_reference_checkpoint,
        reference_to_snapshot,
        reference_to_training_weights,
    )
    from stylenat.reference.layout import describe
    from stylenat.snapshot import SNAPSHOT_FORMAT, CheckpointError
    from stylenat.training.checkpoint import STATE_FORMAT

    fmt = data.get("format") if isinstance(data, dict) else None

    def need(*keys):
        for key in keys:
            if not isinstance(data.get(key), dict):
                raise CheckpointError(f"{path}: a {fmt} file without {key!r}")
        return [data[k] for k in keys]

    if fmt == SNAPSHOT_FORMAT:
        model_config, state = need("model_config", "state_dict")
        return InitSource(path, sha256, "snapshot", model_config, None, state, state, None)
    if fmt == STATE_FORMAT:
        model_config, config, G, D, G_ema = need("model_config", "config", "G", "D", "G_ema")
        d_cfg = config.get("discriminator")
        return InitSource(path, sha256, "training state", model_config, d_cfg, G, G_ema, D)
    if fmt == REFERENCE_WEIGHTS_FORMAT:
        model_config, d_cfg, G, G_ema, D = need("model_config", "discriminator_config", "G", "G_ema", "D")
        return InitSource(path, sha256, "converted .train.pt", model_config, d_cfg, G, G_ema, D)
    if is_reference_checkpoint(data):
        snapshot = reference_to_snapshot(data, source=path, sha256=sha256)
        container = data.get("state_dicts", data)
        if isinstance(container.get("d"), dict) and container["d"]:
            w = reference_to_training_weights(data, snapshot, source=path)
            return InitSource(
                path, sha256, "official checkpoint", w["model_config"], w["discriminator_config"],
                w["G"], w["G_ema"], w["D"],
            )  # fmt: skip
        state = snapshot["state_dict"]
        return InitSource(
            path, sha256, "official checkpoint", snapshot["model_config"], None, state, state, None
        )
    raise CheckpointError(
        f"{path} is not a model file (a snapshot, a training state, an official StyleNAT checkpoint or a "
        f"converted .train.pt): {describe(data)}"
    )


# ------------------------------------------------------------------------------------------ the config


def explicit_keys(overrides: Iterable[str]) -> set[str]:
    """``group.key`` of each command-line override of a model or discriminator key (``model.lr_mlp=0.1``
    -> ``model.lr_mlp``); group choices (``model=tiny``) and other groups are not overrides of init."""
    keys = set()
    for override in overrides:
        parts = override.lstrip("+~").split("=", 1)[0].split(".")
        if len(parts) >= 2 and parts[0] in OVERRIDABLE_GROUPS:
            keys.add(f"{parts[0]}.{parts[1]}")
    return keys


def apply_init(config: dict, source: InitSource, overrides: Iterable[str] = ()) -> dict:
    """The composed ``config`` with its model (and, when the file holds D, its discriminator) from
    ``source``, the explicit overrides that keep every weight's shape, and ``init`` as the file's record."""
    explicit = explicit_keys(overrides)
    model = _with_overrides("model", dict(source.model_config), config["model"], explicit, source, None)
    config = {**config, "model": model, "init": source.record}
    if source.discriminator_config is not None:
        # D's shape keys come from the file; a key the file does not set takes the default table
        disc = {
            **config["discriminator"],
            "channel_max": None,
            "channels": None,
            **source.discriminator_config,
        }
        resolution = model["resolution"]
        config["discriminator"] = _with_overrides(
            "discriminator", disc, config["discriminator"], explicit, source, resolution
        )
    log.info(
        "init=%s (%s): the model config %s from the file",
        source.path,
        source.kind,
        "and D's come" if source.discriminator_config is not None else "comes",
    )
    return config


def _with_overrides(group, base, composed, explicit, source, resolution) -> dict:
    for key in sorted(k.split(".", 1)[1] for k in explicit if k.startswith(f"{group}.")):
        value, before = composed.get(key), base.get(key)
        if value == before:
            continue
        candidate = {**base, key: value}
        try:
            same = _shapes(group, base, resolution) == _shapes(group, candidate, resolution)
        except (ValueError, TypeError, KeyError) as err:
            raise InitError(f"{group}.{key}={value!r}: {str(err).splitlines()[0]}") from None
        if not same:
            raise InitError(
                f"{group}.{key}={value!r} changes the shape of the weights of init={source.path} (the file has "
                f"{group}.{key}={before!r}): drop the override to fine-tune them, or train without init"
            )
        log.info("%s.%s=%r overrides init's %r (every weight keeps its shape)", group, key, value, before)
        base = candidate
    return base


def _shapes(group: str, cfg: dict, resolution: int | None) -> dict:
    """{weight name: shape} of the network a config builds (on the meta device: no memory, no compute)."""
    import torch

    from stylenat.models.build import build_discriminator, build_generator
    from stylenat.models.generator import GeneratorConfig

    with torch.device("meta"):
        if group == "model":
            net = build_generator(GeneratorConfig.from_dict(cfg).validate())
        else:
            net = build_discriminator(cfg, resolution)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


# ------------------------------------------------------------------------------------------ the weights


def load_init_weights(gan, source: InitSource) -> None:
    """``source``'s weights into a fresh ``GanStep`` (its optimizers, counters and RNG stay fresh)."""
    from stylenat import distributed as dist
    from stylenat.snapshot import load_state_dict_strict

    where = f"init={source.path}"
    load_state_dict_strict(gan.G, source.G, f"{where} (G)")
    load_state_dict_strict(gan.G_ema, source.G_ema, f"{where} (G_ema)")
    if source.D is not None:
        load_state_dict_strict(gan.D, source.D, f"{where} (D)")
        log.info("init: G, G_ema and D from %s (%s, sha256 %s)", source.path, source.kind, source.sha256[:12])
    else:
        dist.broadcast_module(gan.D)  # every rank starts from rank 0's fresh D
        log.info(
            "init: G and G_ema from the G_ema of %s (%s, sha256 %s); D fresh (the file holds no discriminator)",
            source.path,
            source.kind,
            source.sha256[:12],
        )
