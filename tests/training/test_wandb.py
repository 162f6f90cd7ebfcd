"""logger=wandb in offline mode writes its run files and keeps the run id for a resume."""

import pytest

from stylenat.training.checkpoint import find_latest_state, load_state
from tests.training.helpers import TINY, run_train, steps_kimg


@pytest.mark.slow
def test_wandb_offline_writes_run_files(tmp_path):
    pytest.importorskip("wandb")
    run, wandb_dir = tmp_path / "run", tmp_path / "wandb_home"
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(wandb_dir), "WANDB_SILENT": "true"}
    proc = run_train([*TINY, "logger=wandb", f"run_dir={run}", f"train.total_kimg={steps_kimg(2)}"], env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((wandb_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("run-*.wandb")), list(runs[0].iterdir())
    run_id = load_state(find_latest_state(run))["logger"]["wandb_id"]
    assert run_id and runs[0].name.endswith(run_id)
    assert (run / "log.jsonl").is_file()  # the jsonl log is always written
    assert (run / "curves.png").is_file()  # logger.plots: the end-of-run curves, uploaded as an image too
    assert list(runs[0].glob("files/media/images/curves_*.png")), list(runs[0].rglob("*.png"))
