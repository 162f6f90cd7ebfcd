"""2-D neighborhood attention with NATTEN's exact semantics, layered: ``dispatch`` (na2d, the backend
choice) on top of three backends (``torch_backend`` with its ``tiling``, ``flex_backend``,
``natten_backend``), all on ``windows`` (the window rule and the argument checks). ``reference`` is the
independent brute-force oracle for tests and benchmarks."""

from stylenat.ops.na.dispatch import (
    ENV_VAR,
    NA_BACKENDS,
    available_backends,
    backend_override,
    na2d,
    resolve_backend,
)
from stylenat.ops.na.reference import na2d_reference
from stylenat.ops.na.windows import BackendUnavailable, neighborhood, window_start

__all__ = [
    "ENV_VAR",
    "NA_BACKENDS",
    "BackendUnavailable",
    "available_backends",
    "backend_override",
    "na2d",
    "na2d_reference",
    "neighborhood",
    "resolve_backend",
    "window_start",
]
