"""train.py end to end in a subprocess: every artefact of a run, and one-line errors for bad input."""

import json

import pytest
import torch
from PIL import Image

import stylenat
from tests.training.helpers import TINY, run_train, steps_kimg

LOG_KEYS = {
    "kimg",
    "step",
    "images_seen",
    "d_loss",
    "g_loss",
    "r1",
    "bcr",
    "d_real",
    "d_fake",
    "lr_g",
    "lr_d",
    "sec_per_kimg",
    "sec_per_step",
    "peak_mem_mb",
    "world_size",
    "timestamp",
}


def _one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.mark.slow
def test_tiny_run_writes_every_artefact_and_refuses_a_mismatched_resume(tmp_path):
    run = tmp_path / "run"
    proc = run_train(
        [
            *TINY,
            f"run_dir={run}",
            f"train.total_kimg={steps_kimg(3)}",
            "train.keep_states=1",
            "train.state_every_kimg=0.004",
            "train.bcr_real=10",  # the paper's bCR on, so that its figure is logged too
            "train.bcr_fake=10",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = sorted(p.name for p in run.iterdir())
    assert "config.yaml" in names and "log.jsonl" in names and "reals.png" in names
    assert "samples-000000.000.png" in names and "samples-000000.012.png" in names
    assert [n for n in names if n.startswith("training-state-")] == [
        "training-state-000000.012.pt"
    ]  # keep_states=1
    assert "network-snapshot-000000.012.pt" in names

    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert records and LOG_KEYS <= set(records[-1])
    assert records[-1]["kimg"] == 0.012 and records[-1]["step"] == 3

    G = stylenat.load_generator(run / "network-snapshot-000000.012.pt")
    assert G(torch.randn(2, G.z_dim)).shape == (2, 3, 16, 16)
    state = torch.load(run / "training-state-000000.012.pt", weights_only=True)
    assert {"G", "D", "G_ema", "opt_G", "opt_D", "rng", "counters", "sampler", "config", "lr"} <= set(state)
    assert state["counters"] == {"step": 3, "images_seen": 12, "skipped_images": 0} and len(state["rng"]) == 1
    G_state = stylenat.load_generator(run / "training-state-000000.012.pt")  # G_ema of a training state
    assert all(torch.equal(a, b) for a, b in zip(G_state.state_dict().values(), G.state_dict().values()))
    assert Image.open(run / "samples-000000.012.png").size == (32, 32)  # 2 x 2 grid of 16 px
    assert "run_dir:" in (run / "config.yaml").read_text()

    # resuming the run with another model: one line, nothing overwritten
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    proc = run_train([*TINY, f"run_dir={run}", "train.total_kimg=1", "model.channels=[32,32,16]"])
    _one_line_error(proc, "model.channels differs", "nothing was written")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["dataset=ffhq256"], ["dataset.path is required"]),
        (
            ["dataset=folder", "dataset.path=/no/such/dir", "dataset.resolution=16", *TINY[2:]],
            ["/no/such/dir", "does not exist"],
        ),
        (["train.bogus=1"], ["train.bogus"]),
        (["dataset=nope"], ["dataset/nope"]),
        (["dataset.resolution=64"], ["dataset.resolution=64 does not match model.resolution=32"]),
        (
            ["train.batch=6", "train.batch_per_gpu=4"],
            ["train.batch=6 is not a multiple of train.batch_per_gpu=4"],
        ),
        (["--bogus"], ["--bogus"]),
    ],
)
def test_bad_input_is_one_line_on_stderr(tmp_path, args, fragments):
    run = tmp_path / "run"
    proc = run_train([f"run_dir={run}", *args])
    _one_line_error(proc, *fragments)
    assert not run.exists()


def test_empty_data_folder_and_missing_resume(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    run = tmp_path / "run"
    proc = run_train(["dataset=folder", f"dataset.path={empty}", *TINY[1:], f"run_dir={run}"])
    _one_line_error(proc, str(empty))
    proc = run_train([*TINY, f"run_dir={run}", f"resume={tmp_path / 'nope.pt'}"])
    _one_line_error(proc, "nope.pt", "no such file")
    assert not run.exists()


def test_help():
    proc = run_train(["--help"])
    assert (
        proc.returncode == 0
        and "dataset: church256 | demo | demo_classes | ffhq1024 | ffhq256 | folder" in proc.stdout
    )
