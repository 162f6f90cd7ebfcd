"""Shared by the training tests: the smallest config that still runs every code path, and runners."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "configs"
PYTHON = sys.executable

# A 16x16 StyleNAT (MHSA-RPB at 4x4, NA at 8x8, two-group dilated Hydra-NA at 16x16) and a small
# wavelet D: about a second per step on a busy 2-core CPU.
TINY = [
    "dataset=demo",
    "dataset.resolution=16",
    "model.resolution=16",
    "model.channels=[32,32,32]",
    "model.min_heads=2",
    "model.z_dim=32",
    "model.w_dim=32",
    "model.n_mlp=2",
    "model.kernels=[[3],[3],[3]]",
    "model.dilations=[[1],[1],[1,2]]",
    "discriminator.channel_max=32",
    "discriminator.sn=true",  # the paper's D (the demo's has none)
    "train.batch=4",
    "train.batch_per_gpu=null",
    "train.reuse_fakes=false",  # the paper's step (the demo's reuse: tests/training/test_reuse_fakes.py)
    "train.workers=0",
    "train.sample_grid=[2,2]",
    "train.log_every_kimg=0.008",
    "train.image_every_kimg=null",
    "train.snapshot_every_kimg=null",
    "train.state_every_kimg=null",
    "train.metrics=[]",
    "logger.progress=false",
]


def steps_kimg(steps: int, batch: int = 4) -> str:
    """train.total_kimg for a number of steps at a batch size (exact in thousandths)."""
    return f"{steps * batch / 1000:.3f}"


def run_train(
    args: list[str], cwd: Path | None = None, env: dict | None = None, torchrun: int = 0, timeout: int = 300
):
    """Run train.py (optionally under torchrun) in a subprocess; returns CompletedProcess (text)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("STYLENAT_DEBUG", None)
    full_env.setdefault("OMP_NUM_THREADS", "1")  # pytest-xdist already runs one test per core
    if torchrun:
        cmd = [
            PYTHON,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={torchrun}",
            str(REPO / "train.py"),
            *args,
        ]
    else:
        cmd = [PYTHON, str(REPO / "train.py"), *args]
    return subprocess.run(cmd, cwd=cwd or REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


def max_diff(a, b, path="") -> float:
    """The largest absolute difference between two nested states (tensors, dicts, lists); other leaves equal."""
    import torch

    if isinstance(a, torch.Tensor):
        assert a.shape == b.shape, path
        return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        return max([max_diff(a[k], b[k], f"{path}.{k}") for k in a] or [0.0])
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        return max([max_diff(x, y, f"{path}[{i}]") for i, (x, y) in enumerate(zip(a, b))] or [0.0])
    assert a == b, f"{path}: {a!r} != {b!r}"
    return 0.0
