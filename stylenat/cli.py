"""The command line of the entry points (train.py, generate.py, evaluate.py and the scripts), one style for all.

Hydra's compose API (rather than ``@hydra.main``) keeps every failure to one line: its composition errors
become ``ConfigError`` and print as ``error: ...``; no ``.hydra/`` folder is written and the working
directory never changes. ``main_with_config`` is the whole command line of an entry point: ``--help``,
``--cfg``, the overrides, then the work.
"""

import contextlib
import ctypes
import functools
import logging
import os
import platform
import re
import sys
from pathlib import Path

from stylenat.training.config import ConfigError  # noqa: E402  (one error type for composing and checking)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"  # a source checkout or an editable install

# Errors that describe bad input (paths, configs, checkpoints, data); anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, KeyError)


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def tune_cpu_allocator() -> bool:
    """Make glibc's malloc keep freed memory for reuse; returns whether it applied (glibc only, and not
    with STYLENAT_MALLOC_TUNING=0).

    CPU tensors come from malloc. By default glibc hands large freed blocks back to the OS (munmap, heap
    trimming), so the next step's temporaries may fault in fresh zeroed pages, one fault per 4 kB: on a
    neighborhood-attention forward+backward here that measured 800 to 21,000 faults per step (up to +40%
    time, depending on where glibc's dynamic thresholds settle). With blocks up to 32 MB served from the heap
    and the heap never trimmed, those pages stay mapped; the process's memory then stays at its peak
    instead of shrinking between steps (the same trade as PyTorch's caching CUDA allocator).
    """
    if os.environ.get("STYLENAT_MALLOC_TUNING", "1") == "0" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    settings = ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_TOP_PAD, 64 << 20))
    return all(mallopt(param, value) == 1 for param, value in settings)


def user_errors_to_exit(fn):
    """Decorator for the entry points: tunes the CPU allocator (see tune_cpu_allocator), then runs fn and
    prints `error: <message>` and exits 2 on a user error. STYLENAT_DEBUG=1 re-raises."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        tune_cpu_allocator()
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as err:
            if os.environ.get("STYLENAT_DEBUG"):
                raise
            message = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
            print(
                f"error: {message.strip().splitlines()[0] if message.strip() else type(err).__name__}",
                file=sys.stderr,
            )
            sys.exit(2)

    return wrapper


def default_config_dir() -> Path:
    """configs/ next to the package; $STYLENAT_CONFIGS overrides."""
    env = os.environ.get("STYLENAT_CONFIGS")
    return Path(env) if env else CONFIG_DIR


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


def config_groups(config_dir: Path) -> str:
    """``  group: option | option`` per config group, for --help."""
    lines = []
    for group in sorted(p for p in Path(config_dir).iterdir() if p.is_dir()):
        options = sorted(f.stem for f in group.glob("*.yaml"))
        lines.append(f"  {group.name}: {' | '.join(options)}")
    return "\n".join(lines)


def setup_logging(rank: int = 0) -> None:
    """INFO on rank 0, warnings only elsewhere, to stderr."""
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@contextlib.contextmanager
def console_above_progress():
    """While a tqdm bar is shown, console log records and Python warnings print above it, not through it.

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


def main_with_config(
    argv: list[str],
    usage: str,
    config_name: str,
    work,
    config_dir: Path | None = None,
    list_groups: bool = False,
) -> int:
    """An entry point's command line: ``--help`` (``usage``, and with ``list_groups`` the config groups),
    ``--cfg`` (print the composed config), else ``work(composed_config)``. Returns the exit status."""
    config_dir = default_config_dir() if config_dir is None else Path(config_dir)
    flags = [a for a in argv if a.startswith("-")]
    overrides = [a for a in argv if not a.startswith("-")]
    unknown = [f for f in flags if f not in ("-h", "--help", "--cfg")]
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]} (see --help)")
    if "-h" in flags or "--help" in flags:
        groups = f"\nConfig groups (configs/<group>/<option>.yaml):\n{config_groups(config_dir)}"
        print(usage + (groups if list_groups else ""))
        return 0
    cfg = compose_config(config_dir, overrides, config_name)
    from omegaconf import OmegaConf

    if "--cfg" in flags:
        print(OmegaConf.to_yaml(cfg))
        return 0
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{missing[0]} is required: pass {missing[0]}=<value> (see --help)")
    work(cfg)
    return 0


# ----------------------------------------------------------------------------------------------------
# Flags and positionals users already type, translated to keys (the scripts' older command lines)
# ----------------------------------------------------------------------------------------------------

SWITCH, VALUE, LIST, TEXT = "switch", "value", "list", "text"
_PLAIN = re.compile(r"[\w./+\-:@]*")


def _override_value(text: str) -> str:
    """A value as Hydra's override grammar reads it: plain words as they are, anything else quoted."""
    if _PLAIN.fullmatch(text) and not text.startswith("-"):
        return text
    if re.fullmatch(r"-?\d+(\.\d+)?(e-?\d+)?", text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def flag_aliases(values=(), switches=(), lists=(), texts=(), prefix: str = "") -> dict:
    """``--key-name`` -> ``(prefix + key, kind)`` for translate_argv, '-' in the flag for '_' in the key."""
    kinds = ((values, VALUE), (switches, SWITCH), (lists, LIST), (texts, TEXT))
    return {f"--{key.replace('_', '-')}": (prefix + key, kind) for keys, kind in kinds for key in keys}


def translate_argv(argv: list[str], positional=(), flags: dict | None = None) -> list[str]:
    """``argv`` with positionals and flags turned into ``key=value`` overrides.

    ``positional``: the keys the bare words (no ``=``, no leading ``-``) fill, in order. ``flags``: ``--flag``
    -> ``(key, kind)``, kind ``SWITCH`` (``key=true``), ``VALUE`` (the next word), ``LIST`` (the words up to
    the next flag or ``key=value``, as a list) or ``TEXT`` (those words joined by spaces, as one string); ``--flag=value``
    also works. ``--help``, ``--cfg`` and unknown flags pass through (main_with_config reports the latter).
    """
    flags = flags or {}
    out, bare, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        name, eq, inline = arg.partition("=")
        if arg.startswith("--") and name in flags:
            key, kind = flags[name]
            if kind == SWITCH:
                if eq:
                    raise ConfigError(f"{name} takes no value (got {arg})")
                out.append(f"{key}=true")
                continue
            words = [inline] if eq else []
            if not eq:
                while (
                    i < len(argv)
                    and "=" not in argv[i]
                    and not (argv[i].startswith("-") and not _is_number(argv[i]))
                ):
                    words.append(argv[i])
                    i += 1
                    if kind == VALUE:
                        break
            if not words:
                raise ConfigError(f"{name} needs a value (see --help)")
            if kind == LIST:
                out.append(f"{key}=[{','.join(_override_value(w) for w in words)}]")
            elif kind == TEXT:
                out.append(f"{key}={_override_value(' '.join(words))}")
            else:
                out.append(f"{key}={_override_value(words[0])}")
        elif not arg.startswith("-") and "=" not in arg and positional:
            bare.append(arg)
        else:
            out.append(arg)
    if len(bare) > len(positional):
        names = " ".join(k.upper() for k in positional)
        expected = f"one {names}" if len(positional) == 1 else names
        raise ConfigError(f"{expected} expected, got {len(bare)}: {' '.join(bare)}")
    return out + [f"{key}={_override_value(word)}" for key, word in zip(positional, bare)]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
