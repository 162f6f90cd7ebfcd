"""The viewer's HTTP API through FastAPI's test client: every endpoint, its 422s, the cache, newest-wins."""

import io
import threading

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the viewer extra is not installed: pip install 'stylenat[viewer]'")
pytest.importorskip("httpx", reason="FastAPI's test client needs httpx")
from fastapi.testclient import TestClient  # noqa: E402

from stylenat.cli import CONFIG_DIR, compose_config  # noqa: E402
from stylenat.sampling import run_generate  # noqa: E402
from stylenat.viewer.app import create_app  # noqa: E402
from stylenat.viewer.render import Renderer  # noqa: E402
from stylenat.viewer.server import snapshot_info  # noqa: E402


@pytest.fixture()
def renderer(tiny_G, tiny_snapshot):
    return Renderer(tiny_G, "cpu", snapshot_info(tiny_snapshot))


@pytest.fixture()
def client(renderer):
    with TestClient(create_app(renderer)) as c:
        yield c


def png(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


def test_page_and_static_files(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for ref in ('src="app.js"', 'href="style.css"', 'id="seed"', 'id="psi"', 'id="class"', 'id="attention"'):
        assert ref in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN, no web fonts
    js = client.get("/app.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"] and "api/image" in js.text
    assert client.get("/style.css").status_code == 200
    assert client.get("/static/../app.py").status_code == 404  # no file path comes from the browser


def test_info(client, tiny_G):
    info = client.get("/api/info").json()
    assert info["resolution"] == 16 and info["n_latent"] == tiny_G.n_latent
    assert info["c_dim"] == 0 and info["class_names"] == []
    assert info["kimg"] == 2.5 and info["config"] == tiny_G.model_config
    assert info["checkpoint"] == "network-snapshot-000002.500.pt"


def test_image_equals_generate_py(client, tiny_snapshot, tmp_path):
    """GET /api/image?seed=S&psi=X is generate.py's seed S at truncation_psi X, pixel for pixel."""
    cfg = compose_config(CONFIG_DIR, [f"checkpoint={tiny_snapshot}", "seeds=[3]", "truncation_psi=0.7",
                                      f"outdir={tmp_path}", "grid=false", "device=cpu"], "generate")
    run_generate(cfg)
    expected = np.asarray(Image.open(tmp_path / "seed0003.png").convert("RGB"))
    served = png(client.get("/api/image?seed=3&psi=0.7"))
    assert np.array_equal(served, expected)
    assert not np.array_equal(png(client.get("/api/image?seed=4&psi=0.7")), expected)


def test_image_options_and_headers(client):
    base = png(client.get("/api/image?seed=1"))
    for query in ("psi=0.3", "psi=-1.5", "cutoff=2&psi=0.3", "mix_seed=9", "mix_seed=9&mix_from=2&mix_to=6"):
        r = client.get(f"/api/image?seed=1&{query}")
        assert png(r).shape == (16, 16, 3) and not np.array_equal(png(r), base), query
        assert float(r.headers["X-Render-Ms"]) >= 0 and r.headers["X-Cache"] == "miss"


@pytest.mark.parametrize(
    "url, field",
    [
        ("/api/image", "seed"),
        ("/api/image?seed=-1", "seed"),
        ("/api/image?seed=4294967296", "seed"),
        ("/api/image?seed=x", "seed"),
        ("/api/image?seed=1&psi=2.01", "psi"),
        ("/api/image?seed=1&psi=nan", "psi"),
        ("/api/image?seed=1&psi=inf", "psi"),
        ("/api/image?seed=1&cutoff=7", "cutoff"),
        ("/api/image?seed=1&class_idx=0", "class_idx"),
        ("/api/image?seed=1&mix_to=3", "mix_to"),
        ("/api/image?seed=1&mix_seed=2&mix_from=4&mix_to=2", "mix_to"),
        ("/api/image?seed=1&mix_seed=2&mix_from=-1", "mix_from"),
        ("/api/image?seed=1&client=a%20b", "client"),
        ("/api/interpolation?seed_a=1", "seed_b"),
        ("/api/interpolation?seed_a=1&seed_b=2&steps=1", "steps"),
        ("/api/interpolation?seed_a=1&seed_b=2&steps=33", "steps"),
        ("/api/interpolation?seed_a=1&seed_b=2&space=q", "space"),
        ("/api/attention?seed=1&x=16&y=0", "x"),
        ("/api/attention?seed=1&x=0&y=-1", "y"),
        ("/api/attention?seed=1&x=0", "y"),
        ("/api/video?seed_a=1&seed_b=2&steps=121", "steps"),
        ("/api/video?seed_a=1&seed_b=2&steps=0", "steps"),
        ("/api/video?seed_a=1&seed_b=2&fps=0", "fps"),
        ("/api/video?seed_a=1&seed_b=2&format=avi", "format"),
    ],
)
def test_bad_requests_are_422_naming_the_field(client, url, field):
    r = client.get(url)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["field"] == field and body["detail"].startswith(f"{field}: ")
    assert client.get("/api/image?seed=0").status_code == 200  # and the server keeps serving


def test_cache_answers_the_second_identical_request(client, renderer):
    first = client.get("/api/image?seed=5&psi=0.5")
    second = client.get("/api/image?seed=5&psi=0.5")
    assert renderer.renders == 1
    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("miss", "hit")
    assert second.content == first.content and second.headers["X-Render-Ms"] == first.headers["X-Render-Ms"]
    client.get("/api/image?seed=5&psi=0.55")
    assert renderer.renders == 2


def test_newest_request_of_a_client_wins(client, renderer):
    """Two requests of one page wait behind a render in progress: the older answers 409 without rendering,
    the newer renders. Ordered through the tickets, not by timing."""
    responses = {}

    def get(seed):
        responses[seed] = client.get(f"/api/image?seed={seed}&psi=0.9&client=page-1")

    with renderer.lock:
        older = threading.Thread(target=get, args=(21,))
        older.start()
        assert renderer.tickets.wait_for("page-1", "image", 1)
        newer = threading.Thread(target=get, args=(22,))
        newer.start()
        assert renderer.tickets.wait_for("page-1", "image", 2)
    older.join(60)
    newer.join(60)
    assert responses[21].status_code == 409 and "newer request" in responses[21].json()["detail"]
    assert responses[22].status_code == 200 and renderer.renders == 1


def test_interpolation_strip(client):
    r = client.get("/api/interpolation?seed_a=1&seed_b=2&steps=5&psi=0.8")
    strip = png(r)
    assert strip.shape == (16, 16 * 5, 3) and r.headers["X-Frames"] == "5"
    ends = png(client.get("/api/image?seed=1&psi=0.8")), png(client.get("/api/image?seed=2&psi=0.8"))
    # the ends are the two seeds' images (through mapping + synthesis: within one level of rounding)
    assert np.abs(strip[:, :16].astype(int) - ends[0]).max() <= 1
    assert np.abs(strip[:, -16:].astype(int) - ends[1]).max() <= 1
    z = png(client.get("/api/interpolation?seed_a=1&seed_b=2&steps=5&psi=0.8&space=z"))
    assert np.abs(z[:, :16].astype(int) - ends[0]).max() <= 1 and not np.array_equal(z, strip)


def test_attention_json(client):
    r = client.get("/api/attention?seed=1&x=3&y=12&psi=0.9&client=p")
    assert r.status_code == 200
    data = r.json()
    assert (data["x"], data["y"], data["resolution"]) == (3, 12, 16) and data["render_ms"] >= 0
    stages = {layer["stage_resolution"] for layer in data["layers"]}
    assert stages == {8, 16}
    for layer in data["layers"]:
        r_ = layer["stage_resolution"]
        assert layer["query"] == [12 * r_ // 16, 3 * r_ // 16]
        for g in layer["groups"]:
            assert np.isclose(np.sum(g["weights"]), 1, atol=1e-4) and g["distance"] > 0 and g["map_distance"] > 0
    assert client.get("/api/attention?seed=1&x=3&y=12&psi=0.9").json()["cached"] is True


def test_video_download(client, tmp_path):
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    r = client.get("/api/video?seed_a=1&seed_b=2&steps=3&fps=10")
    assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
    assert 'filename="interpolation_1_2_w.mp4"' in r.headers["content-disposition"]
    path = tmp_path / "v.mp4"
    path.write_bytes(r.content)
    assert imageio_ffmpeg.count_frames_and_secs(str(path))[0] == 6  # 2 keyframes x 3 frames per transition
    gif = client.get("/api/video?seed_a=1&seed_b=2&steps=3&format=gif")
    assert gif.headers["content-type"] == "image/gif" and Image.open(io.BytesIO(gif.content)).n_frames == 6


def test_conditional_class_selector_api(conditional_G):
    with TestClient(create_app(Renderer(conditional_G))) as c:
        info = c.get("/api/info").json()
        assert info["c_dim"] == 3 and info["class_names"][2] == "class 2"
        a, b = png(c.get("/api/image?seed=1&class_idx=0")), png(c.get("/api/image?seed=1&class_idx=1"))
        assert not np.array_equal(a, b)
        assert c.get("/api/image?seed=1&class_idx=3").json()["field"] == "class_idx"
        assert png(c.get("/api/interpolation?seed_a=1&seed_b=2&steps=2&class_idx=1")).shape == (16, 32, 3)
