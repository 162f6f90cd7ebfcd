"""Whole reference files -> our formats: an inference snapshot (G_ema), the weights to start a run from
(G, G_ema, D), and `load_generator`, which takes our own files first and converts reference ones on the fly.
"""

from __future__ import annotations

from pathlib import Path

import torch

from stylenat.files import sha256_file
from stylenat.reference.config import infer_reference_config
from stylenat.reference.discriminator import convert_discriminator_state
from stylenat.reference.generator import convert_generator_state
from stylenat.reference.layout import (
    is_reference_checkpoint,
    read_reference_checkpoint,
    strip_module_prefix,
    unwrap,
)
from stylenat.snapshot import (
    SNAPSHOT_FORMAT,
    SNAPSHOT_VERSION,
    CheckpointError,
    generator_from_snapshot,
    native_snapshot,
)

CONVERSION_VERSION = 1


def _w_avg(sd, cfg, samples, seed):
    """The mean of the mapping of `samples` seeded z's (the reference keeps no w_avg; truncation needs one)."""
    from stylenat.models.generator import MappingNetwork

    mapping = MappingNetwork(cfg["z_dim"], cfg["w_dim"], cfg["n_mlp"], cfg["lr_mlp"])
    mapping.layers.load_state_dict(
        {
            f"{i}.{p}": sd[f"mapping_net.layers.{i}.{p}"]
            for i in range(cfg["n_mlp"])
            for p in ("weight", "bias")
        }
    )
    if samples <= 0:
        return torch.zeros(cfg["w_dim"])
    gen = torch.Generator().manual_seed(int(seed))
    total = torch.zeros(cfg["w_dim"], dtype=torch.float64)
    with torch.no_grad():
        done = 0
        while done < samples:
            n = min(4096, samples - done)
            z = torch.randn(n, cfg["z_dim"], generator=gen)
            total += mapping(z).double().sum(0)
            done += n
    return (total / samples).float()


def reference_to_snapshot(
    obj, source=None, dilations=None, w_avg_samples=10_000, seed=0, sha256=None
) -> dict:
    """A reference checkpoint (loaded dict) -> our snapshot dict (see `stylenat.snapshot.snapshot_dict`).

    Takes `g_ema` (falling back to `g`). `source` is recorded in meta; when it names a file its sha256 is
    recorded too (pass `sha256` to skip re-hashing). Errors are one-line `CheckpointError`s.
    """
    where = source if source is not None else "checkpoint"
    sd, container, which = unwrap(obj, where)
    try:
        cfg = infer_reference_config(sd, dilations=dilations)
        state, info = convert_generator_state(sd, cfg)
    except CheckpointError as err:
        raise CheckpointError(f"{where}: {err}") from None
    state["w_avg"] = _w_avg(state, cfg, w_avg_samples, seed)
    if sha256 is None and source is not None and Path(source).is_file():
        sha256 = sha256_file(source)
    meta = {
        "source": None if source is None else str(source),
        "source_sha256": sha256,
        "converted_from": "SHI-Labs/StyleNAT reference checkpoint",
        "reference_container": container,  # legacy: top-level g/d/g_ema; new: state_dicts{...}; bare
        "reference_weights": which,
        "reference_attention_layout": info["attention_layout"],  # legacy: rpb0/rpb1; new: rpb.{i}
        "reference_rp_index": info["rp_index"],
        "dilations_from": "override" if dilations is not None else "paper rule",
        "w_avg_samples": int(w_avg_samples),
        "w_avg_seed": int(seed),
        "conversion_version": CONVERSION_VERSION,
    }
    return {
        "format": SNAPSHOT_FORMAT,
        "version": SNAPSHOT_VERSION,
        "model_config": cfg,
        "state_dict": state,
        "meta": meta,
    }


def reference_to_training_weights(
    obj, snapshot=None, source=None, dilations=None, w_avg_samples=10_000, seed=0
):
    """G, G_ema and D of a reference checkpoint under our names (to initialise or fine-tune a run).

    Not a resumable training state: the reference optimizer states, counters and RNG do not map onto
    ours. `snapshot` (from `reference_to_snapshot` on the same object) saves recomputing the G_ema part.
    """
    where = source if source is not None else "checkpoint"
    if snapshot is None:
        snapshot = reference_to_snapshot(
            obj, source=source, dilations=dilations, w_avg_samples=w_avg_samples, seed=seed
        )
    container = obj.get("state_dicts", obj) if isinstance(obj, dict) else None
    if not isinstance(container, dict) or not isinstance(container.get("d"), dict) or not container["d"]:
        raise CheckpointError(f"{where}: missing key 'd' (the discriminator state dict)")
    cfg = snapshot["model_config"]
    g_train = strip_module_prefix(container.get("g"))
    try:
        if isinstance(g_train, dict) and g_train:
            g_state, _ = convert_generator_state(g_train, cfg)
            g_state["w_avg"] = snapshot["state_dict"]["w_avg"].clone()
            g_from = "g"
        else:
            g_state, g_from = (
                {k: v.clone() for k, v in snapshot["state_dict"].items()},
                "g_ema (no g in the file)",
            )
        cm = cfg["channel_multiplier"] if cfg.get("channels") is None else 2
        d_state, d_cfg = convert_discriminator_state(
            strip_module_prefix(container["d"]), cfg["resolution"], cm
        )
    except CheckpointError as err:
        raise CheckpointError(f"{where}: {err}") from None
    meta = dict(
        snapshot["meta"],
        generator_from=g_from,
        discriminator=f"wavelet D, sn, cm={d_cfg['channel_multiplier']}",
    )
    return {
        "format": "stylenat.reference-weights",
        "version": 1,
        "model_config": cfg,
        "discriminator_config": d_cfg,
        "G": g_state,
        "G_ema": snapshot["state_dict"],
        "D": d_state,
        "meta": meta,
    }


def load_reference(path, dilations=None, w_avg_samples=10_000, seed=0):
    """Read a reference file from disk and convert it to a snapshot dict."""
    data = read_reference_checkpoint(path)
    return reference_to_snapshot(
        data, source=str(path), dilations=dilations, w_avg_samples=w_avg_samples, seed=seed
    )


def load_generator(path, device="cpu", dtype="fp32"):
    """Load a snapshot (native, converted official, or an official reference file) ready for sampling.

    Our formats (snapshot, training state) are taken as they are; a reference file is converted in memory
    with the defaults of `reference_to_snapshot`. The file is read once, allowing the reference's `args`.
    `dtype` (fp32 | bf16 | fp16): the generator's compute dtype on `device` (see
    `stylenat.ops.precision.inference_dtype`: an unknown name or a device that cannot run it fails here,
    before the file is read); images come out float32 either way.
    """
    from stylenat.ops.precision import inference_dtype

    compute_dtype = inference_dtype(dtype, device)
    data = read_reference_checkpoint(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a StyleNAT checkpoint (found a {type(data).__name__})")
    snapshot = native_snapshot(data)
    if snapshot is None:
        if not is_reference_checkpoint(data):
            raise CheckpointError(
                f"{path} is not a StyleNAT checkpoint (top-level keys: {sorted(map(str, data))[:8]})"
            )
        snapshot = reference_to_snapshot(data, source=str(path))
    G = generator_from_snapshot(snapshot, source=str(path))
    G.set_compute_dtype(compute_dtype)
    return G.eval().requires_grad_(False).to(device)
