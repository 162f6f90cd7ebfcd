"""``scripts/viewer.py``'s body: checks first (the extra, the port), then the snapshot, then uvicorn."""

from __future__ import annotations

import errno
import logging
import re
import socket
from pathlib import Path

logger = logging.getLogger(__name__)
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); a port in use or a host that cannot be bound is one line."""
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port={port!r}: expected an integer in 0..65535 (0 = any free port)")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise ValueError(f"host={host!r} cannot be resolved: {err.strerror}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise ValueError(f"port {port} on {host} is in use: pass port=<another port> (or port=0)") from None
        raise ValueError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def snapshot_info(path) -> dict:
    """The snapshot's kimg and metadata for the page (best effort: an official file has none)."""
    import torch

    meta = {}
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if isinstance(data, dict) and isinstance(data.get("meta"), dict):
            meta = {k: v for k, v in data["meta"].items() if isinstance(v, (int, float, str, bool))}
    except Exception:  # an official or legacy file: load_generator has read it already; no metadata
        pass
    if "kimg" not in meta:
        m = re.search(r"(\d+(?:\.\d+)?)\.pt$", Path(path).name)
        meta["kimg"] = float(m.group(1)) if m and "snapshot" in Path(path).name else None
    return {"checkpoint": Path(path).name, "kimg": meta.pop("kimg"), "meta": meta}


def run_viewer(cfg) -> None:
    """Serve the viewer for cfg.checkpoint until Ctrl-C (keys in configs/viewer.yaml)."""
    from stylenat.viewer.app import require_extra

    require_extra()
    import uvicorn

    from stylenat.distributed import resolve_device
    from stylenat.reference import load_generator
    from stylenat.viewer.app import create_app
    from stylenat.viewer.render import Renderer

    host = str(cfg.host)
    sock = bind_socket(host, cfg.port)
    try:
        if host not in LOCAL_HOSTS:
            logger.warning("host=%s: the viewer has no authentication; anyone who reaches this address "
                           "can use the page (prefer the default 127.0.0.1 and an SSH tunnel)", host)
        device = resolve_device(cfg.device)
        G = load_generator(cfg.checkpoint, device=device, dtype=cfg.dtype)
        renderer = Renderer(G, device, snapshot_info(cfg.checkpoint), cfg.cache_items, cfg.cache_mb)
        app = create_app(renderer)
        port = sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        logger.info("viewer of %s at http://%s:%d (from another machine: ssh -L %d:127.0.0.1:%d user@this-host, "
                    "then open http://localhost:%d)", cfg.checkpoint, shown, port, port, port, port)
        config = uvicorn.Config(app, log_level=str(cfg.log_level), access_log=bool(cfg.access_log))
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
