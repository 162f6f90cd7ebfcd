"""Config validation up front: every bad key is one line naming key and value, before data or networks.

Most cases run ``train.py``'s own ``main`` in-process, with training
itself replaced by a failure so that a config that wrongly passes cannot start a run.
"""

import dataclasses

import pytest

from stylenat.cli import compose_config, default_config_dir
from stylenat.models.discriminator import check_discriminator_config
from stylenat.models.generator import GeneratorConfig
from stylenat.training import run as training_run
from stylenat.training.config import env_world_size, parse_config
from tests.training.helpers import TINY, run_train
from tests.training.runs import CPU

FOLDER = ["dataset=folder", "dataset.resolution=16", *TINY[2:]]


BAD = [
    # train: types and ranges
    (["train.batch=abc"], "train.batch='abc': expected an integer >= 1"),
    (["train.reuse_fakes=yes"], "train.reuse_fakes='yes': expected true or false"),
    (["train.batch=0"], "train.batch=0: expected an integer >= 1"),
    (["train.batch=2.5"], "train.batch=2.5: expected an integer >= 1"),
    (
        ["train.batch=6", "train.batch_per_gpu=4"],
        "train.batch=6 is not a multiple of train.batch_per_gpu=4 x 1",
    ),
    (["train.d_lr=0"], "train.d_lr=0: expected a number > 0"),
    (["train.g_lr=-1e-4"], "train.g_lr=-0.0001: expected a number > 0"),
    (["train.d_lr=fast"], "train.d_lr='fast': expected a number > 0"),
    (["train.betas=[0.0,1.0]"], "train.betas=(0.0, 1.0): expected [beta1, beta2] in [0, 1)"),
    (["train.betas=[0.9,abc]"], "train.betas=(0.9, 'abc'): expected [beta1, beta2] in [0, 1)"),
    (["train.betas=0.9"], "train.betas=0.9: expected a list"),
    (["train.total_kimg=0"], "train.total_kimg=0: expected a number > 0"),
    (["train.total_kimg=forever"], "train.total_kimg='forever': expected a number > 0"),
    (["train.style_mixing=often"], "train.style_mixing='often': expected a probability in [0, 1]"),
    (
        ["train.ema_halflife_kimg=null", "train.ema_decay=1.5"],
        "train.ema_decay=1.5: expected a value in [0, 1)",
    ),
    (["train.bcr_augment=[flip,zoom]"], "train.bcr_augment=('flip', 'zoom'): unknown op ['zoom']"),
    # resolutions
    (["dataset.resolution=64"], "dataset.resolution=64 does not match model.resolution=32"),
    (["dataset.resolution=null"], "dataset.resolution is required"),
    (["dataset.resolution=abc"], "dataset.resolution='abc': expected a power of two >= 8"),
    (
        ["dataset=folder", "dataset.path=/x", "dataset.resolution=48"],
        "dataset.resolution=48: expected a power of two",
    ),
    (["model.resolution=4", "dataset.resolution=4"], "dataset.resolution=4: expected a power of two >= 8"),
    (["model.resolution=64"], "dataset.resolution=32 does not match model.resolution=64"),
    # generator: per stage, naming the stage and the key
    (
        ["model.kernels=[[3],[5],[5],[9]]"],
        "model.kernels[3]=[9] x dilations[3]=[1, 4]: stage 32x32: kernel_size 9 * dilation 4 = 36 exceeds",
    ),
    (
        ["model.dilations=[[1],[1],[1,4],[1,4]]"],
        "model.kernels[2]=[5] x dilations[2]=[1, 4]: stage 16x16: kernel_size 5 * dilation 4 = 20 exceeds",
    ),
    (["model.kernels=[[3],[4],[5],[5]]"], "model.kernels[1]=[4]: stage 8x8: kernel_size 4 must be odd"),
    (["model.kernels=[[3],[5],[x],[5]]"], "model.kernels[2]=['x']: stage 16x16: expected positive integers"),
    (["model.kernels=5"], "model.kernels=5: expected a list with one entry per stage"),
    (
        ["model.channels=[128,128,64]"],
        "model.channels=[128, 128, 64]: expected 4 entries (one per stage) for resolution 32",
    ),
    (
        ["model.channels=[128,128,64,66]"],
        "model.channels[3]=66: stage 32x32: 66 channels are not divisible by 4 heads",
    ),
    (["model.z_dim=abc"], "model.z_dim='abc': expected an integer >= 1"),
    (["model.use_rpb=maybe"], "model.use_rpb='maybe': expected true or false"),
    (["model.na_backend=torch"], "model.na_backend moved to na_backend: pass na_backend=torch"),
    (["model.checkpoint_blocks=true"], "model.checkpoint_blocks moved to train.checkpoint_blocks"),
    (["na_backend=cuda-magic"], "na_backend='cuda-magic': expected one of auto, torch, natten, flex"),
    # discriminator
    (["discriminator.name=patchgan"], "discriminator.name='patchgan': expected one of stylegan2, wavelet"),
    (
        ["discriminator.channel_multiplier=x"],
        "discriminator.channel_multiplier='x': expected an integer >= 1",
    ),
    (["discriminator.sn=yes"], "discriminator.sn='yes': expected true or false"),
    (
        ["discriminator.channels={33:4}"],
        "discriminator.channels={33: 4}: key 33 is not a power-of-two resolution",
    ),
    (["+discriminator.depth=3"], "discriminator.depth=3: unknown key (known: name,"),
    (
        ["dataset.resolution=8", "model.resolution=8", "model.channels=[32,32]", "model.kernels=[[3],[3]]"],
        "discriminator.name='wavelet': needs a power-of-two image resolution >= 16, got 8",
    ),
    # top level and dataset
    (["seed=abc"], "seed='abc': expected an integer in [0, 2**32)"),
    (["device=tpu"], "device='tpu': expected one of auto, cpu, cuda"),
    (["dataset.xflip=sometimes"], "dataset.xflip='sometimes': expected true or false"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_key_is_one_line_naming_key_and_value(cli, args, message):
    code, lines = cli(*args)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: {message}"), lines[0]


def test_world_size_comes_from_the_environment(cli, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")  # the demo recipe at batch 16, batch_per_gpu null
    assert cli("train.batch=16") == (
        2,
        ["error: train.batch=16 is not divisible by the world size 3 (processes, env WORLD_SIZE)"],
    )
    assert cli("train.batch=abc") == (2, ["error: train.batch='abc': expected an integer >= 1"])
    monkeypatch.setenv("WORLD_SIZE", "two")
    assert cli() == (2, ["error: environment WORLD_SIZE='two': expected a positive integer"])
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(AssertionError, match="training started"):
        cli("train.batch=16")  # 16 = 4 x 4: valid, so the (replaced) training is reached


def test_config_errors_come_before_the_data_set(cli, tmp_path):
    missing = tmp_path / "no-such-folder"
    code, lines = cli(*FOLDER, f"dataset.path={missing}", "model.kernels=[[3],[3],[17]]")
    assert code == 2 and len(lines) == 1 and "model.kernels[2]=[17]" in lines[0], lines
    assert str(missing) not in lines[0]


def test_prepare_run_checks_the_config_before_opening_data(tmp_path, monkeypatch):
    missing = tmp_path / "no-such-folder"
    cfg = compose_config(
        default_config_dir(), [*FOLDER, f"dataset.path={missing}", f"run_dir={tmp_path / 'r'}"]
    )
    three_ranks = dataclasses.replace(CPU, world_size=3)
    with pytest.raises(ValueError, match=r"^train.batch=4 is not divisible by the world size 3"):
        training_run.prepare_run(cfg, three_ranks)
    with pytest.raises(ValueError, match=f"dataset path {missing} does not exist"):
        training_run.prepare_run(cfg, CPU)  # a valid config reaches the data set, which reports the path
    assert not (tmp_path / "r").exists()


def test_direct_calls_name_keys_too():
    assert env_world_size() >= 1
    with pytest.raises(ValueError, match=r"^config group 'train' is missing"):
        parse_config({"model": {}, "discriminator": {}, "dataset": {}, "logger": {}})
    # the models speak their own words (field names); the config parse prefixes the Hydra group
    cfg = GeneratorConfig(resolution=64, kernels=[[3]] * 5, dilations=[[1], [1], [1], [1], [1, 64]])
    with pytest.raises(ValueError, match=r"^kernels\[4\]=\[3\] x dilations\[4\]=\[1, 64\]: stage 64x64"):
        cfg.validate()
    with pytest.raises(ValueError, match=r"^dilations\[3\]=\[1, 2, 3, 4, 5\]: stage 32x32: 5 head groups"):
        GeneratorConfig(
            resolution=32, channels=[64] * 4, kernels=[[3]] * 4, dilations=[[1], [1], [1], [1, 2, 3, 4, 5]]
        ).validate()
    check_discriminator_config({"name": "stylegan2", "channels": {8: 16}, "channel_max": 32}, 8)
    with pytest.raises(ValueError, match=r"^stddev_feat=3: must divide the 32 channels at 4x4"):
        check_discriminator_config({"name": "stylegan2", "channel_max": 32, "stddev_feat": 3}, 8)


def test_train_py_reports_a_bad_value_not_the_missing_data(tmp_path):
    """The real entry point (one subprocess): exit 2, one line, the config error wins over the data."""
    missing = tmp_path / "no-such-folder"
    proc = run_train(
        [*FOLDER, f"dataset.path={missing}", f"run_dir={tmp_path / 'run'}", "train.batch=abc"], cwd=tmp_path
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == ["error: train.batch='abc': expected an integer >= 1"]
    assert not (tmp_path / "run").exists()
