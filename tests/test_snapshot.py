"""Our checkpoint formats (stylenat.snapshot): what a snapshot holds, how reading a bad file fails, and
which files count as ours, so `stylenat.reference.load_generator` converts only what is not."""

import pytest
import torch

from stylenat.models.build import build_generator
from stylenat.snapshot import (
    SNAPSHOT_FORMAT,
    SNAPSHOT_VERSION,
    CheckpointError,
    generator_from_snapshot,
    load_state_dict_strict,
    native_snapshot,
    read_checkpoint,
    save_snapshot,
)
from tests.tiny import TINY_G8

TINY = TINY_G8


@pytest.fixture(scope="module")
def tiny_generator():
    torch.manual_seed(0)
    return build_generator(TINY)


def test_snapshot_is_plain_tensors_and_rebuilds_the_same_generator(tmp_path, tiny_generator):
    path = tmp_path / "sub" / "snap.pt"
    save_snapshot(path, tiny_generator, {"kimg": 3})
    data = torch.load(path, weights_only=True)  # no stylenat classes pickled
    assert data["format"] == SNAPSHOT_FORMAT and data["version"] == SNAPSHOT_VERSION
    assert data["meta"] == {"kimg": 3} and data["model_config"] == tiny_generator.model_config
    assert not list(path.parent.glob(".*.tmp"))
    G = generator_from_snapshot(read_checkpoint(path), source=str(path))
    for k, v in tiny_generator.state_dict().items():
        assert torch.equal(G.state_dict()[k], v), k


def test_read_checkpoint_errors_are_one_line(tmp_path):
    with pytest.raises(CheckpointError, match=r"^checkpoint .*missing\.pt does not exist$"):
        read_checkpoint(tmp_path / "missing.pt")
    text = tmp_path / "notes.pt"
    text.write_text("not a torch file\nsecond line\n")
    with pytest.raises(CheckpointError, match=r"notes\.pt is not a readable checkpoint \(truncated") as info:
        read_checkpoint(text)
    assert "\n" not in str(info.value)


def test_native_snapshot_recognises_only_our_formats(tiny_generator):
    snap = {"format": SNAPSHOT_FORMAT, "model_config": {}, "state_dict": {}}
    assert native_snapshot(snap) is snap
    state = {"format": "stylenat.training-state", "G_ema": {"w": 1}, "model_config": {"r": 8}, "G": {}}
    assert native_snapshot(state) == {"model_config": {"r": 8}, "state_dict": {"w": 1}}
    assert native_snapshot({"g_ema": {}, "g": {}, "d": {}}) is None  # a reference file: the converter's
    assert native_snapshot([1, 2]) is None


def test_strict_loading_names_the_first_bad_key(tiny_generator):
    sd = dict(tiny_generator.state_dict())
    G = build_generator(TINY)
    missing = dict(sd)
    del missing["const"]
    with pytest.raises(CheckpointError, match=r"^src: missing key 'const' \(1 missing in all\)$"):
        load_state_dict_strict(G, missing, "src")
    with pytest.raises(CheckpointError, match=r"^src: unexpected key 'extra' \(1 unexpected in all\)$"):
        load_state_dict_strict(G, dict(sd, extra=torch.zeros(1)), "src")
    with pytest.raises(
        CheckpointError, match=r"^src: key 'w_avg' has shape \[9\] but the model expects \[8\]$"
    ):
        load_state_dict_strict(G, dict(sd, w_avg=torch.zeros(9)), "src")
