"""Fixtures of the training tests."""

import pytest

import train
from stylenat.training import run as training_run


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """Run train.py's main in-process; returns (exit code, stderr lines). Never trains."""
    monkeypatch.delenv("STYLENAT_DEBUG", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)

    def no_training(cfg):
        raise AssertionError("the config passed validation and training started")

    monkeypatch.setattr(training_run, "train", no_training)
    monkeypatch.setattr("stylenat.cli.setup_logging", lambda rank=0: None)
    run = tmp_path / "run"

    def call(*args):
        with pytest.raises(SystemExit) as info:
            train.main([f"run_dir={run}", *args])
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert not run.exists()
        return info.value.code, lines

    return call
