"""Two CPU processes under torchrun (gloo): ranks stay identical, and their state resumes in one process."""

import json

import pytest

from stylenat.training.checkpoint import find_latest_state, load_state
from tests.training.helpers import TINY, run_train, steps_kimg


@pytest.mark.slow
def test_two_processes_stay_in_sync_and_resume_single_process(tmp_path):
    run = tmp_path / "run"
    common = [*TINY, f"run_dir={run}", "train.sync_check=true", "train.r1_every=2", "train.style_mixing=0.5"]
    proc = run_train([*common, f"train.total_kimg={steps_kimg(4)}"], torchrun=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert len(records) == 2  # one per log tick, written by rank 0 only
    for record in records:
        assert record["world_size"] == 2
        digests = record["param_digests"]
        assert len(digests) == 2 and digests[0] == digests[1]
    assert records[0]["param_digests"] != records[1]["param_digests"]  # the weights did move
    state = load_state(find_latest_state(run))
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert state["counters"] == {"step": 4, "images_seen": 16, "skipped_images": 0}

    proc = run_train([*common, f"train.total_kimg={steps_kimg(6)}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "global RNG states not restored" in proc.stderr
    last = json.loads((run / "log.jsonl").read_text().splitlines()[-1])
    assert (last["world_size"], last["step"], last["images_seen"]) == (1, 6, 24)
