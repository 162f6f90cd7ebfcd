"""scripts/benchmark.py viewer on the tiny model: one JSON line per dtype with the server ms per image."""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "benchmark.py"


def test_viewer_mode_tiny(capsys):
    spec = importlib.util.spec_from_file_location("stylenat_benchmark_script_viewer", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["viewer", "--models", "tiny", "--dtype", "fp32", "--reps", "2", "--warmup", "0", "--threads", "1"])
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert record["mode"] == "viewer" and record["model"] == "tiny" and record["resolution"] == 32
    assert record["compute_dtype"] == "float32" and record["reps"] == 2
    assert 0 < record["image_ms_min"] <= record["image_ms_median"] and record["png_bytes"] > 0
    assert record["attention_click_ms"] > 0
