import random

import numpy as np
import pytest
import torch

from stylenat.training import checkpoint as ckpt


def test_names_sort_by_position_and_parse_back(tmp_path):
    assert ckpt.kimg_tag(20_480) == "000020.480"
    for n in (4, 1000, 20_480, 3_000_000):
        ckpt.artifact_path(tmp_path, ckpt.STATE_PREFIX, n).write_bytes(b"x")
    ckpt.artifact_path(tmp_path, ckpt.SNAPSHOT_PREFIX, 9_999_999).write_bytes(b"x")
    (tmp_path / "training-state-garbage.pt").write_bytes(b"x")
    found = ckpt.list_artifacts(tmp_path, ckpt.STATE_PREFIX)
    assert [n for n, _ in found] == [4, 1000, 20_480, 3_000_000]
    assert ckpt.find_latest_state(tmp_path).name == "training-state-003000.000.pt"
    deleted = ckpt.prune(tmp_path, ckpt.STATE_PREFIX, keep=2)
    assert [p.name for p in deleted] == ["training-state-000000.004.pt", "training-state-000001.000.pt"]
    assert len(ckpt.list_artifacts(tmp_path, ckpt.STATE_PREFIX)) == 2
    assert ckpt.prune(tmp_path, ckpt.STATE_PREFIX, keep=None) == []


def test_resolve_resume(tmp_path):
    assert ckpt.resolve_resume(None, tmp_path / "fresh") is None
    state = ckpt.artifact_path(tmp_path, ckpt.STATE_PREFIX, 8)
    state.write_bytes(b"x")
    assert ckpt.resolve_resume(None, tmp_path) == state
    assert ckpt.resolve_resume(str(tmp_path), tmp_path / "other") == state
    assert ckpt.resolve_resume(str(state), tmp_path / "other") == state
    with pytest.raises(FileNotFoundError, match="no such file"):
        ckpt.resolve_resume(str(tmp_path / "nope.pt"), tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no training-state"):
        ckpt.resolve_resume(str(empty), tmp_path)


def test_config_differences_name_the_key():
    saved = {
        "model": {"channels": [32, 32], "na_backend": "torch"},
        "discriminator": {"sn": True},
        "train": {"batch": 4},
    }
    same = {
        "model": {"channels": [32, 32], "na_backend": "natten"},
        "discriminator": {"sn": True},
        "train": {"batch": 8},
    }
    assert ckpt.config_differences(saved, same) == []  # runtime-only and train keys may change
    other = {"model": {"channels": [64, 32]}, "discriminator": {"sn": True}}
    assert ckpt.config_differences(saved, other) == [("model.channels", [32, 32], [64, 32])]
    with pytest.raises(
        ckpt.ResumeError, match=r"model.channels differs \(checkpoint \[32, 32\], config \[64, 32\]\)"
    ):
        ckpt.check_compatible({"config": saved}, other, "x.pt")


def test_state_round_trip_is_weights_only(tmp_path):
    state = {
        "G": {"w": torch.ones(2)},
        "config": {"a": [1, None, "x"]},
        "rng": [ckpt.capture_rng(torch.device("cpu"))],
    }
    path = tmp_path / "training-state-000000.004.pt"
    ckpt.save_state(state, path)
    loaded = ckpt.load_state(path)
    assert torch.equal(loaded["G"]["w"], torch.ones(2)) and loaded["config"] == state["config"]
    torch.save({"format": "stylenat.snapshot"}, tmp_path / "snap.pt")
    with pytest.raises(ckpt.ResumeError, match="not a stylenat training state"):
        ckpt.load_state(tmp_path / "snap.pt")
    (tmp_path / "broken.pt").write_bytes(b"not a zip")
    with pytest.raises(ckpt.ResumeError, match="cannot read training state"):
        ckpt.load_state(tmp_path / "broken.pt")


def test_rng_capture_restore():
    saved = ckpt.capture_rng(torch.device("cpu"))
    a = (torch.rand(3), np.random.rand(3), random.random())
    ckpt.restore_rng(saved, torch.device("cpu"))
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
