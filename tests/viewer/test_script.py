"""scripts/viewer.py as a user runs it: serves the page and the image API; one line for each start failure."""

import importlib
import importlib.util
import io
import json
import logging
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stylenat.sampling import generate_images, to_uint8

ROOT = Path(__file__).resolve().parents[2]


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"{name}_script", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def start_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        load_script("viewer").main(argv)
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_serves_page_and_generate_images(tiny_snapshot, tiny_G):
    pytest.importorskip("uvicorn", reason="the viewer extra is not installed: pip install 'stylenat[viewer]'")
    proc = subprocess.Popen(
        [sys.executable, "scripts/viewer.py", f"checkpoint={tiny_snapshot}", "port=0", "device=cpu"],
        cwd=ROOT, stderr=subprocess.PIPE, text=True,
    )
    try:
        url, lines = None, []
        deadline = time.monotonic() + 240  # generous: a cold start on a loaded machine
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"at (http://127\.0\.0\.1:\d+)", line)
            url = m.group(1) if m else None
        assert url, "".join(lines)
        assert "ssh -L" in "".join(lines)
        for _ in range(100):  # the socket listens before uvicorn answers: retry until it does
            try:
                page = urllib.request.urlopen(url + "/", timeout=60).read().decode()
                break
            except OSError:
                time.sleep(0.2)
        assert "stylenat viewer" in page
        with urllib.request.urlopen(url + "/api/image?seed=3&psi=0.7", timeout=120) as response:
            assert response.headers["content-type"] == "image/png"
            served = np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB"))
        assert np.array_equal(served, to_uint8(generate_images(tiny_G, [3], truncation_psi=0.7))[0])
        info = json.load(urllib.request.urlopen(url + "/api/info", timeout=60))
        assert info["kimg"] == 2.5 and info["resolution"] == 16
    finally:
        proc.terminate()
        proc.wait(60)


def test_port_in_use_is_one_line(tiny_snapshot, capsys):
    pytest.importorskip("uvicorn")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        line = start_error([f"checkpoint={tiny_snapshot}", f"port={port}"], capsys)
    assert line == f"error: port {port} on 127.0.0.1 is in use: pass port=<another port> (or port=0)"


def test_not_a_generator_is_one_line(tmp_path, capsys):
    pytest.importorskip("uvicorn")
    bogus = tmp_path / "weights.pt"
    torch.save({"foo": torch.zeros(2)}, bogus)
    assert start_error([f"checkpoint={bogus}", "port=0"], capsys).startswith(
        f"error: {bogus} is not a StyleNAT checkpoint"
    )
    assert start_error([f"checkpoint={tmp_path / 'missing.pt'}", "port=0"], capsys) == (
        f"error: checkpoint {tmp_path / 'missing.pt'} does not exist"
    )
    assert start_error(["port=0"], capsys) == "error: checkpoint is required: pass checkpoint=<value> (see --help)"


def test_extra_not_installed_is_one_line(tiny_snapshot, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)
    line = start_error([f"checkpoint={tiny_snapshot}"], capsys)
    assert line.startswith("error: the viewer needs FastAPI and uvicorn: pip install 'stylenat[viewer]'")


def test_stylenat_imports_without_the_extra(monkeypatch):
    """Every viewer and video module imports (fresh) with fastapi, uvicorn and imageio-ffmpeg unimportable."""
    for name in ("fastapi", "uvicorn", "imageio_ffmpeg"):
        monkeypatch.setitem(sys.modules, name, None)
    modules = ["stylenat.video", "stylenat.viewer", "stylenat.viewer.render", "stylenat.viewer.attention",
               "stylenat.viewer.app", "stylenat.viewer.server", "stylenat.viewer.bench"]
    import stylenat

    for name in modules:
        monkeypatch.delitem(sys.modules, name, raising=False)
    for attr in ("video", "viewer"):  # the package attributes the fresh imports rebind: restored afterwards
        monkeypatch.setattr(stylenat, attr, getattr(stylenat, attr, None), raising=False)
    for name in modules:
        importlib.import_module(name)
    from stylenat.viewer.app import ViewerUnavailable, require_extra

    with pytest.raises(ViewerUnavailable, match=r"pip install 'stylenat\[viewer\]'"):
        require_extra()


def test_other_host_warns_no_authentication(tmp_path, capsys, caplog):
    pytest.importorskip("uvicorn")
    with caplog.at_level(logging.WARNING):
        start_error([f"checkpoint={tmp_path / 'missing.pt'}", "host=0.0.0.0", "port=0"], capsys)
    assert "no authentication" in caplog.text


@pytest.mark.parametrize("name", ["viewer", "video"])
def test_every_config_key_is_documented(name):
    lines = (ROOT / "configs" / f"{name}.yaml").read_text().splitlines()
    keys = [line for line in lines if line and not line.startswith((" ", "#"))]
    assert keys and all("#" in line for line in keys), [line for line in keys if "#" not in line]
