"""The tqdm bar ends where the run really ends, and log lines / warnings print above it, not through it."""

import logging
import sys
import warnings

import pytest
from tqdm import TqdmWarning

from stylenat.cli import compose_config, console_above_progress
from stylenat.training.config import resolve_config
from stylenat.training.options import TrainOptions
from stylenat.training.run import Trainer, prepare_run
from stylenat.training.sinks import Progress, file_log_handler
from tests.training.helpers import CONFIG_DIR, TINY
from tests.training.runs import CPU


def options(*overrides) -> TrainOptions:
    cfg = resolve_config(compose_config(CONFIG_DIR, ["run_dir=/tmp/x", *overrides]))
    return TrainOptions.from_dict(cfg["train"])


def test_end_images_is_the_first_step_boundary_at_or_past_the_total():
    opts = options("train.total_kimg=3", "train.batch=16")
    assert opts.total_images == 3000
    assert opts.end_images() == 3008  # 188 steps of 16: the loop stops at 3.008 kimg, not 3.000
    assert opts.end_images(2992) == 3008 and opts.end_images(3008) == 3008 and opts.end_images(4000) == 4000
    assert options("train.total_kimg=3.2", "train.batch=16").end_images() == 3200  # a whole number of steps
    assert options("train.total_kimg=0.010", "train.batch=4").end_images(4) == 12  # a resume mid-way


def test_progress_counts_to_the_real_end_without_a_warning():
    end = options("train.total_kimg=3", "train.batch=16").end_images()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        progress = Progress(end / 1000, 0.0)
        for images in range(16, end + 1, 16):  # kimg as the loop reports it: images / 1000, a float
            progress.update(images / 1000, {"d_loss": 1.0})
        assert progress.bar.n == progress.bar.total == 3008
        assert "3.008/3.008 kimg" in str(progress.bar) and "100%" in str(progress.bar)
        progress.close()
    assert not [w for w in caught if issubclass(w.category, TqdmWarning)], [str(w.message) for w in caught]


def test_a_resumed_bar_starts_where_the_state_is():
    progress = Progress(0.012, 0.008)
    assert progress.bar.n == 8 and progress.bar.total == 12
    progress.update(0.012)
    assert progress.bar.n == 12
    progress.close()


def _after_last_cr(line: str) -> str:
    return line.rsplit("\r", 1)[-1]


def test_log_lines_and_warnings_print_above_the_bar(tmp_path, capsys):
    root = logging.getLogger()
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    old_level = root.level
    root.addHandler(console)
    root.setLevel(logging.INFO)
    showwarning = warnings.showwarning
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            with console_above_progress():
                run_log = file_log_handler(tmp_path)  # attached inside, as RunOutputs does
                root.addHandler(run_log)
                progress = Progress(0.012, 0.0)
                progress.update(0.004)
                logging.getLogger("stylenat.test").info("hello from the loop")
                warnings.warn("a library warning", UserWarning, stacklevel=1)
                progress.update(0.012)
                progress.close()
                root.removeHandler(run_log)
                run_log.close()
            assert warnings.showwarning is showwarning  # warnings are not routed through logging afterwards
    finally:
        root.removeHandler(console)
        root.setLevel(old_level)
    err = capsys.readouterr().err
    lines = err.split("\n")
    said = [_after_last_cr(line) for line in lines if "hello from the loop" in line]
    assert said == ["INFO stylenat.test: hello from the loop"], lines
    warned = [_after_last_cr(line) for line in lines if "UserWarning: a library warning" in line]
    assert len(warned) == 1 and warned[0].startswith("WARNING py.warnings: "), lines
    assert "UserWarning: a library warning" in warned[0]
    assert "0.012/0.012 kimg" in err
    text = (tmp_path / "train.log").read_text()
    assert "INFO stylenat.test: hello from the loop" in text and "UserWarning: a library warning" in text
    assert "kimg" not in text and "\r" not in text  # the bar never reaches the run's log file


@pytest.mark.slow
@pytest.mark.parametrize("plots", [True, False])
def test_a_run_ends_its_bar_at_the_real_end_and_plots_when_asked(tmp_path, capsys, caplog, plots):
    run = tmp_path / "run"
    overrides = [o for o in TINY if not o.startswith("logger.progress")]
    # batch 4, total 0.006 kimg: two steps, so the run really ends at 0.008 kimg
    cfg = compose_config(
        CONFIG_DIR,
        [
            *overrides,
            f"run_dir={run}",
            "train.total_kimg=0.006",
            "logger.progress=true",
            f"logger.plots={plots}",
        ],
    )
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        trainer = Trainer(prepare_run(cfg, CPU))
        trainer.fit()
    assert trainer.counters.images_seen == 8
    err = capsys.readouterr().err
    assert "0.008/0.008 kimg" in err and "/0.006" not in err
    assert not [w for w in caught if issubclass(w.category, TqdmWarning)]
    assert (run / "curves.png").is_file() == plots
    last = [r.getMessage() for r in caplog.records if r.name == "stylenat.training.run_log"][-1]
    assert last.startswith(
        f"finished at 0.008 kimg: run dir {run}; final grid {run / 'samples-000000.008.png'}"
    )
    assert last.endswith(
        f"curves {run / 'curves.png'}"
        if plots
        else "(logger.plots=false; python scripts/plot_run.py " + f"{run})"
    )
