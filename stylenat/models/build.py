"""The one place that turns a config mapping into a network."""

from collections.abc import Mapping

from stylenat.models.generator import Generator, GeneratorConfig


def _plain(cfg):
    """Accept dicts and OmegaConf nodes alike without importing omegaconf in the model layer."""
    if hasattr(cfg, "_metadata"):  # an OmegaConf DictConfig
        from omegaconf import OmegaConf

        return OmegaConf.to_container(cfg, resolve=True)
    return dict(cfg)


def build_generator(model_cfg: Mapping) -> Generator:
    """Build the generator from a model config (Hydra `model` group or a snapshot's `model_config`)."""
    return Generator(GeneratorConfig.from_dict(_plain(model_cfg)))


def build_discriminator(disc_cfg: Mapping, resolution: int):
    """Build a discriminator from the Hydra `discriminator` group: `name` picks the architecture."""
    from stylenat.models.discriminator import build_discriminator as _build

    cfg = _plain(disc_cfg)
    name = cfg.pop("name", "wavelet")
    return _build(name, resolution, **cfg)
