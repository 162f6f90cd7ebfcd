"""The one place that turns a config mapping into a network."""

from collections.abc import Mapping

from stylenat.models.generator import Generator, GeneratorConfig


def _plain(cfg):
    """Accept dicts and OmegaConf nodes alike without importing omegaconf in the model layer."""
    if hasattr(cfg, "_metadata"):  # an OmegaConf DictConfig
        from omegaconf import OmegaConf

        return OmegaConf.to_container(cfg, resolve=True)
    return dict(cfg)


def build_generator(
    model_cfg: Mapping | GeneratorConfig, *, na_backend: str = "auto", checkpoint_blocks: bool = False
) -> Generator:
    """Build the generator from a model config (a parsed ``GeneratorConfig``, the Hydra `model` group or a
    snapshot's `model_config`) and the runtime settings that are not part of it (see Generator)."""
    config = (
        model_cfg if isinstance(model_cfg, GeneratorConfig) else GeneratorConfig.from_dict(_plain(model_cfg))
    )
    return Generator(config, na_backend=na_backend, checkpoint_blocks=checkpoint_blocks)


def build_discriminator(disc_cfg: Mapping, resolution: int, c_dim: int = 0):
    """Build a discriminator from the Hydra `discriminator` group (or a converted checkpoint's
    ``discriminator_config``): `name` picks the architecture (default "wavelet"), the other keys go to its
    constructor; `c_dim` (the number of classes, from the data) > 0 makes it class-conditional
    (projection)."""
    from stylenat.models.discriminator import DISCRIMINATORS

    cfg = _plain(disc_cfg)
    name = cfg.pop("name", "wavelet")
    if c_dim:
        cfg["c_dim"] = c_dim
    try:
        cls = DISCRIMINATORS[name]
    except (KeyError, TypeError):
        allowed = ", ".join(repr(k) for k in sorted(DISCRIMINATORS))
        raise ValueError(f"unknown discriminator {name!r}; expected one of {allowed}") from None
    return cls(resolution, **cfg)
