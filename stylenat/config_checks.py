"""Composed configs -> typed, checked dataclasses, one line per failure naming the key.

Training has its own parser (stylenat/training/config.py); the inference entry points (generate.py,
evaluate.py, scripts/project.py) parse through ``typed``: every field of the dataclass is a key of the
YAML, its annotation (``int``, ``float | None``, ``bool``, ``str``, ``list``, a nested dataclass, or
``object`` for anything) is checked, and an unknown or missing key is named.
"""

from __future__ import annotations

import dataclasses


class ConfigError(ValueError):
    """A config that cannot be composed or fails a check; the message names the key."""


_SCALARS = {"int": int, "float": float, "bool": bool, "str": str, "list": list, "dict": dict, "None": type(None)}


def _accepts(annotation: str, value) -> bool:
    for name in (part.strip() for part in annotation.split("|")):
        if name == "object":
            return True
        kind = _SCALARS.get(name.split("[")[0])
        if kind is None:
            continue
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if kind is int and isinstance(value, bool):
            continue
        if isinstance(value, kind):
            return True
    return False


def typed(cls, mapping, prefix: str = ""):
    """``cls(**mapping)`` with every key known, present (or defaulted) and of its field's type."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(mapping, DictConfig):
        mapping = OmegaConf.to_container(mapping, resolve=True)
    if not isinstance(mapping, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {mapping!r}")
    hints = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(mapping) - set(hints))
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (known: {', '.join(hints)})")
    values = {}
    for name, f in hints.items():
        key = f"{prefix}{name}"
        if name not in mapping:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{key} is required: pass {key}=<value> (see --help)")
            continue
        value, annotation = mapping[name], _annotation_text(f.type)
        nested = f.type if dataclasses.is_dataclass(f.type) else _dataclass_named(cls, annotation)
        if nested is not None:
            value = typed(nested, value if value is not None else {}, f"{key}.")
        elif not _accepts(str(annotation), value):
            raise ConfigError(f"{key} must be {annotation}, got {value!r}")
        values[name] = value
    return cls(**values)


def _annotation_text(annotation) -> str:
    """``int | None`` as written (a string under ``from __future__ import annotations``, else the type)."""
    if isinstance(annotation, str):
        return annotation
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("NoneType", "None")


def _dataclass_named(cls, annotation):
    import sys

    found = getattr(sys.modules[cls.__module__], str(annotation), None)
    return found if dataclasses.is_dataclass(found) else None
