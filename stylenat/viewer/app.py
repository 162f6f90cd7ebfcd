"""The viewer's HTTP side: a FastAPI app over a ``Renderer`` (see render.py for the work and the rules).

    GET /                     the page (static/index.html; app.js and style.css beside it, no CDN)
    GET /api/info             resolution, n_latent, c_dim, class names, kimg, the model config
    GET /api/image            ?seed=S&psi=X[&cutoff=&class_idx=&mix_seed=&mix_from=&mix_to=] -> image/png
    GET /api/interpolation    ?seed_a=&seed_b=[&steps=&space=w|z&psi=...] -> image/png, the frames side by side
    GET /api/attention        image parameters + &x=&y= (pixel) -> JSON weights per layer and head group
    GET /api/video            ?seed_a=&seed_b=[&steps=&space=&fps=&format=auto|mp4|gif] -> the loop a -> b -> a

Every render endpoint takes an optional ``client`` id: requests of one client and endpoint are newest-wins
(an older one still waiting for the render lock answers 409). Bad parameters answer 422 with ``field`` naming
the parameter. Headers: ``X-Render-Ms`` (server time of the render) and ``X-Cache`` (hit | miss).
FastAPI is imported inside create_app only (``stylenat[viewer]``), so ``stylenat`` imports without it. No
``from __future__ import annotations`` here: the routes' Annotated types are local to create_app.
"""

from pathlib import Path
from typing import Annotated

from stylenat.viewer.render import (
    MAX_STRIP_STEPS,
    MAX_VIDEO_FRAMES,
    PSI_RANGE,
    SEED_MAX,
    ImageParams,
    ParamError,
    Renderer,
    StripParams,
    Superseded,
)

STATIC = Path(__file__).resolve().parent / "static"
STATIC_FILES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
CLIENT_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
EXTRA_MESSAGE = "the viewer needs FastAPI and uvicorn: pip install 'stylenat[viewer]'"


class ViewerUnavailable(ValueError):
    """The optional dependencies of the viewer are missing (one line, with the install command)."""


def require_extra() -> None:
    """Raise ViewerUnavailable when fastapi or uvicorn cannot be imported."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        raise ViewerUnavailable(f"{EXTRA_MESSAGE} ({err.name or err} is missing)") from None


def _headers(result) -> dict:
    return {
        "X-Render-Ms": f"{result.render_ms:.1f}",
        "X-Cache": "hit" if result.cached else "miss",
        "Cache-Control": "no-store",
    }


def create_app(renderer: Renderer):
    """The FastAPI app serving ``renderer``'s generator."""
    require_extra()
    from fastapi import FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response

    app = FastAPI(title="stylenat viewer", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.renderer = renderer

    def unprocessable(field: str, detail: str, errors=None):
        body = {"detail": detail, "field": field}
        if errors:
            body["errors"] = errors
        return JSONResponse(status_code=422, content=body)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        errors = [
            {"field": str(e["loc"][-1]) if e.get("loc") else "", "msg": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"field": "", "msg": "invalid request"}
        return unprocessable(first["field"], f"{first['field']}: {first['msg']}", errors)

    @app.exception_handler(ParamError)
    async def bad_param(request: Request, exc: ParamError):
        return unprocessable(exc.field, str(exc))

    @app.exception_handler(Superseded)
    async def superseded(request: Request, exc: Superseded):
        return JSONResponse(status_code=409, content={"detail": str(exc)})

    def static(name: str):
        return Response((STATIC / name).read_bytes(), media_type=STATIC_FILES[name],
                        headers={"Cache-Control": "no-cache"})

    @app.get("/", include_in_schema=False)
    def index():
        return static("index.html")

    @app.get("/app.js", include_in_schema=False)
    def app_js():
        return static("app.js")

    @app.get("/style.css", include_in_schema=False)
    def style_css():
        return static("style.css")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon():
        return Response(status_code=204)

    @app.get("/api/info")
    def info():
        return renderer.info()

    # parameter types (Annotated, so FastAPI copies the constraints per parameter); the renderer checks
    # what depends on the generator (layer ranges, cutoff, class, x / y) and answers ParamError
    Seed = Annotated[int, Query(ge=0, le=SEED_MAX)]  # noqa: N806
    OptSeed = Annotated[int | None, Query(ge=0, le=SEED_MAX)]  # noqa: N806
    Psi = Annotated[float, Query(ge=PSI_RANGE[0], le=PSI_RANGE[1], allow_inf_nan=False)]  # noqa: N806
    Index = Annotated[int | None, Query(ge=0, le=1 << 20)]  # noqa: N806
    Pixel = Annotated[int, Query(ge=0, le=1 << 20)]  # noqa: N806
    Client = Annotated[str | None, Query(pattern=CLIENT_PATTERN)]  # noqa: N806
    Space = Annotated[str, Query(pattern="^(w|z)$")]  # noqa: N806

    @app.get("/api/image")
    def image(seed: Seed, psi: Psi = 1.0, cutoff: Index = None, class_idx: Index = None,
              mix_seed: OptSeed = None, mix_from: Index = None, mix_to: Index = None, client: Client = None):
        params = ImageParams(seed, psi, cutoff, class_idx, mix_seed, mix_from, mix_to)
        result = renderer.image_result(params, client)
        return Response(result.data, media_type="image/png", headers=_headers(result))

    @app.get("/api/interpolation")
    def interpolation(seed_a: Seed, seed_b: Seed,
                      steps: Annotated[int, Query(ge=2, le=MAX_STRIP_STEPS)] = 8, space: Space = "w",
                      psi: Psi = 1.0, cutoff: Index = None, class_idx: Index = None, client: Client = None):
        params = StripParams(seed_a, seed_b, steps, space, psi, cutoff, class_idx)
        result = renderer.strip_result(params, client)
        headers = {**_headers(result), "X-Frames": str(steps)}
        return Response(result.data, media_type="image/png", headers=headers)

    @app.get("/api/attention")
    def attention(seed: Seed, x: Pixel, y: Pixel, psi: Psi = 1.0, cutoff: Index = None,
                  class_idx: Index = None, mix_seed: OptSeed = None, mix_from: Index = None,
                  mix_to: Index = None, client: Client = None):
        params = ImageParams(seed, psi, cutoff, class_idx, mix_seed, mix_from, mix_to)
        result = renderer.attention_result(params, x, y, client)
        body = {**result.data, "render_ms": round(result.render_ms, 1), "cached": result.cached}
        return JSONResponse(body, headers=_headers(result))

    @app.get("/api/video")
    def video(seed_a: Seed, seed_b: Seed,
              steps: Annotated[int, Query(ge=1, le=MAX_VIDEO_FRAMES // 2)] = 30, space: Space = "w",
              psi: Psi = 1.0, cutoff: Index = None, class_idx: Index = None,
              fps: Annotated[int, Query(ge=1, le=60)] = 30,
              format: Annotated[str, Query(pattern="^(auto|mp4|gif)$")] = "auto", client: Client = None):
        params = StripParams(seed_a, seed_b, steps, space, psi, cutoff, class_idx)
        result = renderer.video_result(params, fps, format, client)
        data, fmt = result.data
        name = f"interpolation_{seed_a}_{seed_b}_{space}.{fmt}"
        headers = {**_headers(result), "Content-Disposition": f'attachment; filename="{name}"'}
        return Response(data, media_type="video/mp4" if fmt == "mp4" else "image/gif", headers=headers)

    return app
