"""stylenat.viewer.render without any web framework: parameter checks, the cache, newest-wins."""

import threading

import numpy as np
import pytest

from stylenat.sampling import generate_images, to_uint8
from stylenat.viewer.render import (
    ImageParams,
    LRUCache,
    ParamError,
    Renderer,
    Result,
    StripParams,
    Superseded,
    Tickets,
)


def test_image_is_generate_images_for_seed_and_psi(tiny_G):
    renderer = Renderer(tiny_G)
    expected = to_uint8(generate_images(tiny_G, [7], truncation_psi=0.6))[0]
    assert np.array_equal(renderer.image_array(ImageParams(7, 0.6)), expected)


def test_mixing_takes_the_layer_range_from_the_second_seed(tiny_G):
    renderer = Renderer(tiny_G)
    p = renderer.check_image(ImageParams(1, 1.0, mix_seed=2))
    assert (p.mix_from, p.mix_to) == (0, tiny_G.n_latent // 2)  # the coarse half by default
    ws = renderer.ws(p)
    w1 = renderer.ws(ImageParams(1))
    w2 = renderer.ws(ImageParams(2))
    assert np.allclose(ws[0, : p.mix_to], w2[0, : p.mix_to]) and np.allclose(ws[0, p.mix_to :], w1[0, p.mix_to :])
    whole = renderer.check_image(ImageParams(1, mix_seed=2, mix_from=0, mix_to=tiny_G.n_latent))
    assert np.array_equal(renderer.image_array(whole), renderer.image_array(ImageParams(2)))


@pytest.mark.parametrize(
    "params, field",
    [
        (ImageParams(-1), "seed"),
        (ImageParams(2**32), "seed"),
        (ImageParams(0, psi=2.5), "psi"),
        (ImageParams(0, psi=float("nan")), "psi"),
        (ImageParams(0, cutoff=99), "cutoff"),
        (ImageParams(0, class_idx=0), "class_idx"),  # unconditional generator
        (ImageParams(0, mix_from=1), "mix_from"),  # without mix_seed
        (ImageParams(0, mix_seed=2**32), "mix_seed"),
        (ImageParams(0, mix_seed=1, mix_from=6), "mix_from"),
        (ImageParams(0, mix_seed=1, mix_from=3, mix_to=3), "mix_to"),
        (ImageParams(0, mix_seed=1, mix_to=7), "mix_to"),
    ],
)
def test_bad_parameters_name_their_field(tiny_G, params, field):
    with pytest.raises(ParamError) as err:
        Renderer(tiny_G).image_result(params)
    assert err.value.field == field and str(err.value).startswith(f"{field}: ")


def test_strip_and_video_bounds(tiny_G):
    renderer = Renderer(tiny_G)
    with pytest.raises(ParamError, match="^steps: "):
        renderer.strip_result(StripParams(0, 1, steps=1000))
    with pytest.raises(ParamError, match="^space: "):
        renderer.strip_result(StripParams(0, 1, space="x"))
    with pytest.raises(ParamError, match="^steps: "):
        renderer.video_result(StripParams(0, 1, steps=10_000))


def test_second_identical_request_is_not_rendered_again(tiny_G):
    renderer = Renderer(tiny_G)
    first = renderer.image_result(ImageParams(3, 0.7))
    second = renderer.image_result(ImageParams(3, 0.7))
    assert renderer.renders == 1 and second.cached and not first.cached
    assert second.data == first.data and second.render_ms == first.render_ms
    renderer.image_result(ImageParams(3, 0.8))
    assert renderer.renders == 2


def test_lru_cache_is_bounded():
    cache = LRUCache(max_items=2, max_bytes=10)
    for key in "abc":
        cache.put(key, Result(b"xx", 1.0))
    assert len(cache) == 2 and cache.get("a") is None
    cache.get("b")  # b becomes the most recent: c goes next
    cache.put("d", Result(b"xx", 1.0))
    assert cache.get("b") is not None and cache.get("c") is None
    cache.put("big", Result(b"x" * 11, 1.0))  # larger than the whole cache: not kept
    assert cache.get("big") is None
    cache.put("e", Result(b"x" * 9, 1.0))  # evicts until the bytes fit
    assert cache.get("e") is not None and len(cache) == 1


def test_tickets_newest_wins_per_client_and_endpoint():
    tickets = Tickets(max_clients=2)
    a1 = tickets.take("a", "image")
    other = tickets.take("a", "attention")
    assert tickets.is_latest(a1) and tickets.is_latest(other)
    a2 = tickets.take("a", "image")
    assert not tickets.is_latest(a1) and tickets.is_latest(a2) and tickets.is_latest(other)


def test_stale_requests_are_dropped_before_rendering(tiny_G):
    """Three requests of one client queue behind a held render lock: only the newest renders. Ordered by the
    tickets taken (no sleeps), so the outcome is the same on any machine."""
    renderer = Renderer(tiny_G)
    results = {}

    def request(seed):
        try:
            results[seed] = renderer.image_result(ImageParams(seed), client="page1")
        except Superseded as err:
            results[seed] = err

    threads = []
    with renderer.lock:  # a render in progress
        for n, seed in enumerate((11, 12, 13), start=1):
            threads.append(threading.Thread(target=request, args=(seed,)))
            threads[-1].start()
            assert renderer.tickets.wait_for("page1", "image", n)
        other = renderer.tickets.take("page2", "image")  # another client is not affected by page1's
    for thread in threads:
        thread.join(60)
    assert isinstance(results[11], Superseded) and isinstance(results[12], Superseded)
    assert isinstance(results[13], Result) and renderer.renders == 1
    assert renderer.tickets.is_latest(other)
    # without a client id requests are never dropped (scripts, checks): they just wait their turn
    assert not renderer.image_result(ImageParams(11)).cached and renderer.renders == 2


def test_attention_at_a_pixel_matches_attention_maps(tiny_G):
    """The panel's weights for the image on screen are attention_maps' weights for that seed and pixel."""
    from stylenat.attention_maps import attention_maps

    renderer = Renderer(tiny_G)
    data = renderer.attention_result(ImageParams(5, 0.8), x=9, y=4).data
    maps = attention_maps(tiny_G, [5], [[4, 9]], truncation_psi=0.8)
    by_name = {g.name: g for g in maps.groups}
    assert [layer["name"] for layer in data["layers"]] == list(dict.fromkeys(g.layer for g in maps.groups))
    for layer in data["layers"]:
        for group in layer["groups"]:
            ref = by_name[f"{layer['name']}_group{group['group']}"]
            np.testing.assert_allclose(np.array(group["weights"]), ref.weights[0, 0], atol=2e-6)
            assert np.array_equal(np.stack(np.meshgrid(group["rows"], group["cols"], indexing="ij"), -1), ref.keys[0])
            np.testing.assert_allclose(group["map_distance"], ref.distance[0].mean(), rtol=1e-3)
            w = np.array(group["weights"])
            assert w.shape == (group["kernel"],) * 2 and abs(w.sum() - 1) < 1e-4
    dilations = [g["dilation"] for layer in data["layers"] for g in layer["groups"]]
    assert 2 in dilations and 1 in dilations  # the local window and the dilated grid side by side
    with pytest.raises(ParamError, match="^x: "):
        renderer.attention_result(ImageParams(5), x=16, y=0)


def test_conditional_generator_classes(conditional_G):
    renderer = Renderer(conditional_G)
    info = renderer.info()
    assert info["c_dim"] == 3 and info["class_names"] == ["class 0", "class 1", "class 2"]
    a = renderer.image_array(ImageParams(4, class_idx=0))
    b = renderer.image_array(ImageParams(4, class_idx=2))
    assert not np.array_equal(a, b)
    assert np.array_equal(renderer.image_array(ImageParams(4)), a)  # class 0 when none is chosen
    with pytest.raises(ParamError, match="^class_idx: "):
        renderer.image_result(ImageParams(4, class_idx=3))
    mixed = renderer.check_image(ImageParams(4, class_idx=1, mix_seed=5))
    assert renderer.image_array(mixed).shape == (16, 16, 3)
    assert renderer.attention_result(ImageParams(4, class_idx=1), 3, 3).data["layers"]


def test_video_takes_the_render_lock_frame_by_frame(tiny_G, monkeypatch):
    """Each frame is computed under the lock and the lock is free between frames (so the page's images are
    served while a long video renders)."""
    from stylenat import video

    renderer = Renderer(tiny_G)
    computed_locked, consumed_locked = [], []
    real_frames, real_bytes = video.video_frames, video.video_bytes

    def frames(*args, **kwargs):
        for frame in real_frames(*args, **kwargs):
            computed_locked.append(renderer.lock.locked())
            yield frame

    def encode(frames, fps, fmt):
        def watched():
            for frame in frames:
                consumed_locked.append(renderer.lock.locked())
                yield frame

        return real_bytes(watched(), fps, "gif")

    monkeypatch.setattr(video, "video_frames", frames)
    monkeypatch.setattr(video, "video_bytes", encode)
    data, fmt = renderer.video_result(StripParams(1, 2, steps=3)).data
    assert fmt == "gif" and computed_locked == [True] * 6 and consumed_locked == [False] * 6
