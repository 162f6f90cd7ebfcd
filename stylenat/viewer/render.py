"""What the viewer computes, in plain Python (no web framework): parameters and their checks, the render
lock with newest-wins tickets, the LRU cache, and the renders themselves over ``stylenat.sampling``,
``stylenat.video`` and ``stylenat.attention_maps``.

One render at a time: every render takes ``Renderer.lock`` (a video takes it frame by frame). A request that names a ``client`` first takes
a ticket (a generation number per client and endpoint); when it gets the lock and a newer ticket of the same
client and endpoint exists, it is dropped (``Superseded``) before rendering, so a dragged slider renders
its last position, not fifty stale ones. Results are cached by their parameters (bounded LRU); a cached
result is answered without waiting for the lock.
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

from stylenat import video
from stylenat.sampling import seed_latents, to_uint8

SEED_MAX = 2**32 - 1  # numpy RandomState's seed range
PSI_RANGE = (-2.0, 2.0)
MAX_STRIP_STEPS = 32
MAX_VIDEO_FRAMES = 240  # frames_per_transition x 2 keyframes
MAX_CLIENTS = 1024  # newest-wins tickets kept (least recently seen clients forgotten first)


class ParamError(ValueError):
    """A request parameter out of range; ``field`` names it (the API answers 422 with it)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class Superseded(Exception):
    """A newer request of the same client and endpoint came in while this one waited: not rendered."""


@dataclass(frozen=True)
class ImageParams:
    """One image: a seed, its truncation, its class and an optional second seed for layers [mix_from, mix_to)."""

    seed: int
    psi: float = 1.0
    cutoff: int | None = None
    class_idx: int | None = None
    mix_seed: int | None = None
    mix_from: int | None = None
    mix_to: int | None = None


@dataclass(frozen=True)
class StripParams:
    seed_a: int
    seed_b: int
    steps: int = 8
    space: str = "w"
    psi: float = 1.0
    cutoff: int | None = None
    class_idx: int | None = None


@dataclass
class Result:
    data: object  # PNG bytes, video bytes or a JSON-able dict
    render_ms: float  # server time of the render (the original render's for a cached result)
    cached: bool = False


class LRUCache:
    """Results by key, least recently used dropped first beyond ``max_items`` or ``max_bytes``."""

    def __init__(self, max_items: int = 256, max_bytes: int = 256 << 20):
        self.max_items, self.max_bytes = max_items, max_bytes
        self._items: OrderedDict = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @staticmethod
    def _size(result: Result) -> int:
        return len(result.data) if isinstance(result.data, (bytes, bytearray)) else 1024

    def get(self, key) -> Result | None:
        with self._lock:
            result = self._items.get(key)
            if result is not None:
                self._items.move_to_end(key)
            return result

    def put(self, key, result: Result) -> None:
        size = self._size(result)
        with self._lock:
            if key in self._items:
                self._bytes -= self._size(self._items.pop(key))
            if size > self.max_bytes or self.max_items < 1:
                return
            self._items[key] = result
            self._bytes += size
            while len(self._items) > self.max_items or self._bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._bytes -= self._size(old)

    def __len__(self) -> int:
        return len(self._items)


class Tickets:
    """Newest-wins bookkeeping: the latest generation number per (client, endpoint)."""

    def __init__(self, max_clients: int = MAX_CLIENTS):
        self.max_clients = max_clients
        self._latest: OrderedDict = OrderedDict()
        self._changed = threading.Condition()

    def take(self, client: str, endpoint: str) -> tuple:
        with self._changed:
            key = (client, endpoint)
            generation = self._latest.pop(key, 0) + 1
            self._latest[key] = generation
            while len(self._latest) > self.max_clients:
                self._latest.popitem(last=False)
            self._changed.notify_all()
            return key, generation

    def is_latest(self, ticket) -> bool:
        key, generation = ticket
        with self._changed:
            return self._latest.get(key, generation) == generation

    def wait_for(self, client: str, endpoint: str, generation: int, timeout: float = 60.0) -> bool:
        """Block until (client, endpoint) has reached ``generation`` (for tests that order requests)."""
        with self._changed:
            return self._changed.wait_for(
                lambda: self._latest.get((client, endpoint), 0) >= generation, timeout
            )


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "png")
    return buf.getvalue()


class Renderer:
    """A loaded generator behind one lock, a cache and newest-wins tickets; every ``*_result`` method
    checks its parameters (ParamError) and returns a Result (or raises Superseded)."""

    def __init__(self, G, device="cpu", info: dict | None = None, cache_items: int = 256,
                 cache_mb: int = 256):
        self.G, self.device = G, torch.device(device)
        self.c_dim = int(getattr(G, "c_dim", 0) or 0)
        self.extra_info = dict(info or {})
        self.lock = threading.Lock()
        self.cache = LRUCache(cache_items, cache_mb << 20)
        self.tickets = Tickets()
        self.renders = 0  # renders actually run (cache misses that were not superseded)

    # ------------------------------------------------------------------------------------ info, checks
    def info(self) -> dict:
        G = self.G
        names = getattr(G, "class_names", None)
        if self.c_dim and not names:
            names = [str(i) for i in range(self.c_dim)]
        return {
            "resolution": G.resolution,
            "n_latent": G.n_latent,
            "z_dim": G.z_dim,
            "w_dim": G.w_dim,
            "c_dim": self.c_dim,
            "class_names": list(names) if self.c_dim else [],
            "seed_max": SEED_MAX,
            "psi_range": list(PSI_RANGE),
            "max_strip_steps": MAX_STRIP_STEPS,
            "max_video_frames": MAX_VIDEO_FRAMES,
            "device": str(self.device),
            "compute_dtype": str(getattr(G, "compute_dtype", torch.float32)).replace("torch.", ""),
            "config": G.model_config,
            **self.extra_info,
        }

    def _check_common(self, seeds: dict, psi, cutoff, class_idx) -> None:
        for field, seed in seeds.items():
            if seed is not None and not 0 <= seed <= SEED_MAX:
                raise ParamError(field, f"{seed} is outside 0..{SEED_MAX}")
        if not (PSI_RANGE[0] <= psi <= PSI_RANGE[1]):  # also false for NaN
            raise ParamError("psi", f"{psi} is outside [{PSI_RANGE[0]}, {PSI_RANGE[1]}]")
        n = self.G.n_latent
        if cutoff is not None and not 0 <= cutoff <= n:
            raise ParamError("cutoff", f"{cutoff} is outside 0..{n} (the generator has {n} ws)")
        if class_idx is not None and not self.c_dim:
            raise ParamError("class_idx", "this generator is unconditional (no classes)")
        if class_idx is not None and not 0 <= class_idx < self.c_dim:
            raise ParamError("class_idx", f"{class_idx} is outside 0..{self.c_dim - 1}")

    def check_image(self, p: ImageParams) -> ImageParams:
        """The parameters with mixing's defaults filled in (layers [0, n_latent // 2) from mix_seed)."""
        self._check_common({"seed": p.seed, "mix_seed": p.mix_seed}, p.psi, p.cutoff, p.class_idx)
        if p.mix_seed is None:
            for field in ("mix_from", "mix_to"):
                if getattr(p, field) is not None:
                    raise ParamError(field, "needs mix_seed (the seed the layers come from)")
            return p
        n = self.G.n_latent
        lo = 0 if p.mix_from is None else p.mix_from
        hi = n // 2 if p.mix_to is None else p.mix_to
        if not 0 <= lo < n:
            raise ParamError("mix_from", f"{lo} is outside 0..{n - 1}")
        if not lo < hi <= n:
            raise ParamError("mix_to", f"{hi} must be in {lo + 1}..{n} (after mix_from={lo})")
        return ImageParams(p.seed, p.psi, p.cutoff, p.class_idx, p.mix_seed, lo, hi)

    def check_strip(self, p: StripParams) -> StripParams:
        self._check_common({"seed_a": p.seed_a, "seed_b": p.seed_b}, p.psi, p.cutoff, p.class_idx)
        if p.space not in video.SPACES:
            raise ParamError("space", f"{p.space!r} is not one of {', '.join(video.SPACES)}")
        return p

    # ------------------------------------------------------------------------------------ scheduling
    def run(self, endpoint: str, key, render, client: str | None = None, hold_lock: bool = True) -> Result:
        """``render()`` -> data under the lock, unless cached or superseded (see the module docstring).
        ``hold_lock=False``: render() takes the lock itself, step by step (a video, frame by frame, so the
        page's images are served between its frames)."""
        ticket = self.tickets.take(client, endpoint) if client else None
        cache_key = (endpoint, key)
        hit = self.cache.get(cache_key)
        if hit is not None:
            return Result(hit.data, hit.render_ms, cached=True)
        with self.lock if hold_lock else contextlib.nullcontext():
            if ticket is not None and not self.tickets.is_latest(ticket):
                raise Superseded(f"{endpoint}: a newer request of client {client!r} replaced this one")
            hit = self.cache.get(cache_key)
            if hit is not None:
                return Result(hit.data, hit.render_ms, cached=True)
            start = time.perf_counter()
            data = render()
            result = Result(data, (time.perf_counter() - start) * 1e3)
            self.renders += 1
        self.cache.put(cache_key, result)
        return result

    def locked_steps(self, steps):
        """The items of iterator ``steps``, each one computed under the render lock."""
        while True:
            with self.lock:
                item = next(steps, None)
            if item is None:
                return
            yield item

    # ------------------------------------------------------------------------------------ renders
    @torch.no_grad()
    def ws(self, p: ImageParams) -> torch.Tensor:
        """The image's per-layer ws [1, n_latent, w_dim] (mixing applied)."""
        G, seeds = self.G, [p.seed] if p.mix_seed is None else [p.seed, p.mix_seed]
        z = seed_latents(seeds, G.z_dim, self.device)
        condition = video.class_condition(G, p.class_idx, len(seeds), self.device)
        ws = G.mapping(z, truncation_psi=p.psi, truncation_cutoff=p.cutoff, **condition)
        if p.mix_seed is not None:  # row 1 is mix_seed's ws: its layers [mix_from, mix_to) go into row 0
            mixed, ws = ws[1:], ws[:1].clone()
            ws[:, p.mix_from : p.mix_to] = mixed[:, p.mix_from : p.mix_to]
        return ws

    @torch.no_grad()
    def image_array(self, p: ImageParams) -> np.ndarray:
        """HWC uint8: without mixing exactly generate.py's image (the same G(z) call)."""
        G = self.G
        if p.mix_seed is None:
            z = seed_latents([p.seed], G.z_dim, self.device)
            condition = video.class_condition(G, p.class_idx, 1, self.device)
            images = G(z, truncation_psi=p.psi, truncation_cutoff=p.cutoff, **condition)
        else:
            images = G.to_minus_one_one(G.synthesis(self.ws(p)))
        return to_uint8(images.float())[0]

    def image_result(self, p: ImageParams, client: str | None = None) -> Result:
        p = self.check_image(p)
        return self.run("image", p, lambda: png_bytes(self.image_array(p)), client)

    def strip_result(self, p: StripParams, client: str | None = None) -> Result:
        p = self.check_strip(p)
        if not 2 <= p.steps <= MAX_STRIP_STEPS:
            raise ParamError("steps", f"{p.steps} is outside 2..{MAX_STRIP_STEPS}")

        def render():
            frames = video.strip_frames(self.G, p.seed_a, p.seed_b, p.steps, p.space, p.psi, p.cutoff,
                                        p.class_idx, self.device)
            return png_bytes(np.concatenate(list(frames), axis=1))

        return self.run("interpolation", p, render, client)

    def video_result(self, p: StripParams, fps: int = 30, fmt: str = "auto", client: str | None = None):
        """The loop seed_a -> seed_b -> seed_a as scripts/video.py writes it (grid 1x1, seeds [a, b],
        frames_per_transition = steps); Result.data is (bytes, 'mp4' | 'gif'). Rendered frame by frame
        under the lock, so images are served between its frames."""
        p = self.check_strip(p)
        if not 1 <= p.steps <= MAX_VIDEO_FRAMES // 2:
            raise ParamError("steps", f"{p.steps} is outside 1..{MAX_VIDEO_FRAMES // 2} frames per transition")
        if not 1 <= fps <= 60:
            raise ParamError("fps", f"{fps} is outside 1..60")
        if fmt not in video.FORMATS:
            raise ParamError("format", f"{fmt!r} is not one of {', '.join(video.FORMATS)}")

        def render():
            frames = video.video_frames(self.G, [p.seed_a, p.seed_b], (1, 1), p.steps, p.space, "cubic",
                                        p.psi, p.cutoff, p.class_idx, self.device)
            return video.video_bytes(self.locked_steps(frames), fps, fmt)

        return self.run("video", (p, fps, fmt), render, client, hold_lock=False)

    def attention_result(self, p: ImageParams, x: int, y: int, client: str | None = None) -> Result:
        from stylenat.viewer.attention import attention_at

        p = self.check_image(p)
        R = self.G.resolution
        for field, v in (("x", x), ("y", y)):
            if not 0 <= v < R:
                raise ParamError(field, f"{v} is outside the {R}x{R} image (0..{R - 1})")
        render = lambda: {**attention_at(self.G, self.ws(p), y, x), "params": asdict(p)}  # noqa: E731
        return self.run("attention", (p, x, y), render, client)
