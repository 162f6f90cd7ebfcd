"""(g) scripts/compute_ref_stats.py end to end (real weights, 8 tiny images) and its one-line errors."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stylenat.metrics.inception_weights import FID_HELPER_SHA256

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "compute_ref_stats.py"


def _images(folder: Path, n=8, size=24):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _script_main():
    spec = importlib.util.spec_from_file_location("compute_ref_stats", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_script_writes_stats_with_provenance(tmp_path, fid_helper_path):
    data = _images(tmp_path / "imgs")
    out = tmp_path / "ref.npz"
    env = {**os.environ, "STYLENAT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            str(data),
            str(out),
            "--protocol",
            "pytorch_fid",
            "--max-images",
            "6",
            "--seed",
            "3",
            "--batch",
            "4",
            "--device",
            "cpu",
            "--weights",
            str(fid_helper_path),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    with np.load(out) as f:
        assert f["mu"].shape == (2048,) and f["sigma"].shape == (2048, 2048)
        assert str(f["protocol"]) == "pytorch_fid" and int(f["num_images"]) == 6
        assert str(f["weights_sha256"]) == FID_HELPER_SHA256
        assert str(f["subset"]) == "random" and int(f["seed"]) == 3 and int(f["cov_ddof"]) == 1
        assert len(str(f["data_fingerprint"])) == 64


@pytest.mark.parametrize(
    "argv, message",
    [
        (["{missing}", "{out}", "--protocol", "stylegan"], "error: dataset path"),
        (
            ["{data}", "{out}", "--protocol", "stylegan", "--max-images", "50"],
            "error: requested 50 real images but the data set has only 8",
        ),
        (["{data}", "{tmp}/out.txt", "--protocol", "stylegan"], "error: output must end in .npz"),
        (
            ["{data}", "{out}", "--protocol", "stylegan", "--weights", "{missing}"],
            "error: Inception weights file not found",
        ),
    ],
)
def test_script_errors_are_one_line(tmp_path, argv, message):
    data = _images(tmp_path / "imgs")
    fill = {
        "missing": str(tmp_path / "missing"),
        "out": str(tmp_path / "o.npz"),
        "data": str(data),
        "tmp": str(tmp_path),
    }
    with pytest.raises(SystemExit) as err:
        _script_main()([a.format(**fill) for a in argv])
    text = str(err.value.code)
    assert text.startswith(message) and "\n" not in text
