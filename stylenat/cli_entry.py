"""Console scripts (``[project.scripts]`` in pyproject.toml): ``stylenat-train`` runs train.py's ``main``,
``stylenat-<script>`` scripts/<script>.py's, with the same command line (stylenat.cli).

The entry points and scripts live in the source checkout beside configs/ (which they compose), so these
functions load them from there: an editable install (``pip install -e .``) is what they serve, as
``stylenat.cli.CONFIG_DIR`` is. Nothing here is imported by the library.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_file(relative: str, argv: list[str] | None = None) -> int:
    """``main(argv)`` of the checkout's ``relative`` file (argv: the command line's by default)."""
    path = REPO / relative
    if not path.is_file():
        print(
            f"error: {path} not found: the console scripts need the source checkout (pip install -e .)",
            file=sys.stderr,
        )
        return 2
    name = "stylenat_entry_" + path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # pickling by reference (fresh-process benchmarks) finds it
    spec.loader.exec_module(module)
    status = module.main(sys.argv[1:] if argv is None else argv)
    return int(status or 0)


def _entry(relative: str):
    def main() -> int:
        return run_file(relative)

    main.__name__ = main.__qualname__ = Path(relative).stem.replace("-", "_")
    main.__doc__ = f"The console script of {relative}."
    return main


train = _entry("train.py")
generate = _entry("generate.py")
evaluate = _entry("evaluate.py")
attention_maps = _entry("scripts/attention_maps.py")
benchmark = _entry("scripts/benchmark.py")
compute_ref_stats = _entry("scripts/compute_ref_stats.py")
convert_checkpoint = _entry("scripts/convert_checkpoint.py")
evaluate_run = _entry("scripts/evaluate_run.py")
gpu_check = _entry("scripts/gpu_check.py")
plot_run = _entry("scripts/plot_run.py")
prepare_dataset = _entry("scripts/prepare_dataset.py")
project = _entry("scripts/project.py")
video = _entry("scripts/video.py")
viewer = _entry("scripts/viewer.py")
