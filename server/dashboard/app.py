"""The central aggregation dashboard: a read-only FastAPI app over the run store.

Pages are rendered on the server (Jinja2) and then kept current by a small script that polls
the JSON API and draws the charts with Plotly, served from the installed ``plotly`` Python
package (no CDN: hospital networks are often offline).

Routes (all GET):

=====================================  ========================================================
``/``                                  runs list
``/runs/{id}``                         run page: curves, ROC, confusion, sites, checkpoints,
                                       config, events
``/runs/{id}/checkpoints/{round}``     download the global model saved after ``round``
``/vendor/plotly.min.js``              the chart library, from the installed plotly package
``/api/runs``                          ``{"runs": [...]}``
``/api/runs/{id}``                     ``{"run", "sites", "checkpoints"}``
``/api/runs/{id}/rounds?after=N``      ``{"status", "rounds_done", "rounds": [...]}`` (rounds > N)
``/api/runs/{id}/sites``               ``{"sites": [...]}`` with privacy spend vs budget
``/api/runs/{id}/roc?round=N``         ROC curves + confusion matrix (default: last round)
``/api/runs/{id}/checkpoints``         ``{"checkpoints": [...]}``
``/api/runs/{id}/events``              ``{"events": [...]}`` (audit trail, newest first)
``/api/health``                        ``{"ok": true}``
=====================================  ========================================================

Access: with a ``token``, every request must carry ``Authorization: Bearer TOKEN``; a browser
may open any page once with ``?token=TOKEN``, which sets an HttpOnly cookie for the rest (and
is redirected to the same path on this host, never elsewhere). Without a token the dashboard
answers only requests addressed to this machine by a loopback name (``Host: localhost``,
``127.0.0.1``, ``[::1]``, any port): a web page elsewhere cannot read it by pointing a DNS name
of its own at 127.0.0.1 (DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
from collections.abc import Awaitable, Callable
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from server.store import RunStore, RunStoreError

__all__ = ["create_app", "TOKEN_COOKIE", "plotly_js_path"]

_log = logging.getLogger(__name__)

#: The cookie that carries the token after a browser opened a page with ``?token=``.
TOKEN_COOKIE = "fedfusion_dashboard_token"

_HERE = Path(__file__).resolve().parent
_PRIVACY_WARN = 0.75  # spent / budget from which the privacy bar turns amber
_PRIVACY_DANGER = 0.9  # ... and red


def plotly_js_path() -> Path:
    """``plotly.min.js`` inside the installed ``plotly`` package.

    Raises:
        RuntimeError: when plotly is not installed (``pip install plotly``).
    """
    try:
        path = Path(str(files("plotly") / "package_data" / "plotly.min.js"))
    except ModuleNotFoundError as err:
        raise RuntimeError(
            "the dashboard draws its charts with plotly.min.js from the `plotly` package; "
            "install it with `pip install plotly`"
        ) from err
    if not path.is_file():
        raise RuntimeError(f"plotly is installed but {path} is missing; reinstall plotly")
    return path


def create_app(
    store: RunStore, *, token: str | None = None, refresh_seconds: float = 2.0
) -> FastAPI:
    """Build the dashboard app over an open store.

    Args:
        store: the run store to read (never written).
        token: when set, every request needs it (bearer header, or the cookie set by opening
            a page with ``?token=``). Default None (no check: for 127.0.0.1 only).
        refresh_seconds: how often open pages poll for new rounds. Default 2.0.
    """
    if refresh_seconds <= 0:
        raise ValueError(f"refresh_seconds must be > 0, got {refresh_seconds}")
    plotly_js = plotly_js_path()
    app = FastAPI(
        title="fedfusion dashboard",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    templates = Jinja2Templates(directory=str(_HERE / "templates"))
    templates.env.filters["auc"] = _fmt_auc
    templates.env.filters["when"] = _fmt_when
    templates.env.filters["bytes"] = _fmt_bytes
    app.mount("/static", StaticFiles(directory=str(_HERE / "static")), name="static")

    @app.middleware("http")
    async def _read_only(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if request.method not in ("GET", "HEAD"):
            return JSONResponse({"detail": "the dashboard is read-only"}, status_code=405)
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response

    if token:  # added last, so it runs first: nothing is answered without the token
        app.middleware("http")(_token_guard(token))
    else:  # added last, so it runs first: nothing is answered to another host name
        app.middleware("http")(_loopback_host_guard)

    def _page(request: Request, name: str, **context: Any) -> HTMLResponse:
        return templates.TemplateResponse(
            request,
            name,
            {"refresh_ms": int(refresh_seconds * 1000), "store_url": store.display_url, **context},
        )

    # ------------------------------------------------------------------ pages

    @app.get("/", response_class=HTMLResponse)
    def runs_page(request: Request) -> HTMLResponse:
        return _page(request, "runs.html", runs=store.list_runs())

    @app.get("/runs/{run_id}", response_class=HTMLResponse)
    def run_page(request: Request, run_id: int) -> HTMLResponse:
        run = _or_404(store.get_run, run_id)
        return _page(
            request,
            "run.html",
            run=run,
            sites=_with_privacy_levels(store.sites(run_id)),
            checkpoints=_public_checkpoints(run_id, store.checkpoints(run_id)),
            events=store.events(run_id, limit=20),
        )

    @app.get("/runs/{run_id}/checkpoints/{server_round}")
    def download_checkpoint(run_id: int, server_round: int) -> FileResponse:
        _or_404(store.get_run, run_id)
        row = store.checkpoint(run_id, server_round)
        if row is None:
            raise HTTPException(404, f"run {run_id} has no checkpoint for round {server_round}")
        path = Path(row["path"])
        if not path.is_file():
            raise HTTPException(
                410, f"the checkpoint file of run {run_id} round {server_round} is gone"
            )
        return FileResponse(
            path,
            media_type="application/octet-stream",
            filename=f"run-{run_id}-round-{server_round:03d}.pt",
        )

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/vendor/plotly.min.js", include_in_schema=False)
    def plotly_asset() -> FileResponse:
        return FileResponse(
            plotly_js,
            media_type="text/javascript",
            headers={"Cache-Control": "public, max-age=86400"},
        )

    # ------------------------------------------------------------------ JSON API

    @app.get("/api/health")
    def health() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/api/runs")
    def api_runs(limit: int | None = Query(None, ge=1, le=10000)) -> dict[str, Any]:
        return {"runs": store.list_runs(limit=limit)}

    @app.get("/api/runs/{run_id}")
    def api_run(run_id: int) -> dict[str, Any]:
        run = _or_404(store.get_run, run_id)
        return {
            "run": run,
            "sites": _with_privacy_levels(store.sites(run_id)),
            "checkpoints": _public_checkpoints(run_id, store.checkpoints(run_id)),
        }

    @app.get("/api/runs/{run_id}/rounds")
    def api_rounds(run_id: int, after: int = Query(0, ge=0)) -> dict[str, Any]:
        run = _or_404(store.get_run, run_id)
        return {
            "status": run["status"],
            "rounds_done": run["rounds_done"],
            "rounds_planned": run["rounds_planned"],
            "rounds": store.rounds(run_id, after=after),
        }

    @app.get("/api/runs/{run_id}/sites")
    def api_sites(run_id: int) -> dict[str, Any]:
        return {"sites": _with_privacy_levels(_or_404(store.sites, run_id))}

    @app.get("/api/runs/{run_id}/roc")
    def api_roc(run_id: int, server_round: int | None = Query(None, alias="round", ge=1)) -> Any:
        roc = _or_404(store.roc, run_id, server_round)
        if roc is None:
            which = f"round {server_round}" if server_round else "any round"
            raise HTTPException(404, f"run {run_id} has no ROC curve for {which} yet")
        return roc

    @app.get("/api/runs/{run_id}/checkpoints")
    def api_checkpoints(run_id: int) -> dict[str, Any]:
        return {"checkpoints": _public_checkpoints(run_id, _or_404(store.checkpoints, run_id))}

    @app.get("/api/runs/{run_id}/events")
    def api_events(run_id: int, limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
        _or_404(store.get_run, run_id)
        return {"events": store.events(run_id, limit=limit)}

    return app


def _token_guard(
    token: str,
) -> Callable[[Request, Callable[[Request], Awaitable[Response]]], Awaitable[Response]]:
    """Middleware: 401 unless the request carries the token (header, cookie or ``?token=``)."""
    expected = token.encode()

    def _matches(candidate: str | None) -> bool:
        return candidate is not None and secrets.compare_digest(candidate.encode(), expected)

    async def guard(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        header = request.headers.get("authorization", "")
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() == "bearer" and _matches(credentials.strip()):
            return await call_next(request)
        if _matches(request.cookies.get(TOKEN_COOKIE)):
            return await call_next(request)
        if _matches(request.query_params.get("token")):
            # A browser opened a link with the token: keep it in a cookie, drop it from the URL.
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = _local_path(request.url.path) + (f"?{urlencode(rest)}" if rest else "")
            response = RedirectResponse(target, status_code=303)
            response.set_cookie(
                TOKEN_COOKIE,
                token,
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
            )
            return response
        return JSONResponse(
            {"detail": "a bearer token is required (Authorization: Bearer TOKEN)"},
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="fedfusion dashboard"'},
        )

    return guard


#: Characters a path segment may hold as they are (RFC 3986 pchar without "%"); any other
#: character of a redirect target is percent-encoded.
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


def _local_path(path: str) -> str:
    """``path`` as a redirect target on this host: one leading ``/`` (``//evil.example/x`` and
    ``/\\evil.example`` would send a browser to another host), the rest percent-encoded (a
    browser drops tabs and newlines, and reads ``\\`` as ``/``)."""
    target = "/" + quote(path.lstrip("/\\"), safe=_PATH_SAFE)
    if target.startswith(("//", "/\\")):  # pragma: no cover - lstrip and quote rule it out
        raise ValueError(f"not a local path: {target!r}")
    return target


#: Host names that always mean this machine (the dashboard without a token answers only them).
_LOOPBACK_NAMES = frozenset({"localhost", "localhost."})


def _host_name(host: str) -> str:
    """The name part of a ``Host`` header: ``[::1]:8050`` -> ``::1``, ``a:80`` -> ``a``."""
    host = host.strip().lower()
    if host.startswith("["):
        name, bracket, port = host[1:].partition("]")
        return name if bracket and (not port or port[:1] == ":" and port[1:].isdigit()) else ""
    name, colon, port = host.rpartition(":")
    return name if colon and port.isdigit() and ":" not in name else host


def _is_loopback_host(host: str | None) -> bool:
    """Whether a ``Host`` header names this machine: ``localhost``, ``127.x.x.x`` or ``::1``,
    with or without a port."""
    name = _host_name(host or "")
    if name in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


async def _loopback_host_guard(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """Middleware (no token): 403 unless the ``Host`` header is a loopback name."""
    host = request.headers.get("host")
    if _is_loopback_host(host):
        return await call_next(request)
    what = f"Host {host!r}" if host else "a request without a Host header"
    return JSONResponse(
        {
            "detail": f"{what} refused: without a token the dashboard answers only "
            "http://localhost, http://127.0.0.1 or http://[::1] (with a token it may be "
            "served under other names)"
        },
        status_code=403,
    )


def _or_404(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except RunStoreError as err:
        raise HTTPException(404, str(err)) from err


def _with_privacy_levels(sites: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ``privacy.fraction`` (spent / budget) and ``privacy.level`` (ok / warn / danger)."""
    for site in sites:
        spend = site.get("privacy")
        if not spend:
            continue
        budget, epsilon = spend.get("budget"), spend.get("epsilon")
        if budget and epsilon is not None:
            fraction = float(epsilon) / float(budget)
            spend["fraction"] = fraction
            spend["level"] = (
                "danger"
                if fraction >= _PRIVACY_DANGER
                else "warn"
                if fraction >= _PRIVACY_WARN
                else "ok"
            )
        else:
            spend["fraction"] = None
            spend["level"] = "unknown"
    return sites


def _public_checkpoints(run_id: int, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Checkpoints as the API shows them: a download URL instead of the server's file path."""
    return [
        {
            "round": row["round"],
            "file": Path(row["path"]).name,
            "size_bytes": row["size_bytes"],
            "sha256": row["sha256"],
            "created_at": row["created_at"],
            "url": f"/runs/{run_id}/checkpoints/{row['round']}",
        }
        for row in rows
    ]


def _fmt_auc(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _fmt_when(value: str | None) -> str:
    if not value:
        return "–"
    return value.replace("T", " ")[:19] + " UTC"


def _fmt_bytes(value: int | None) -> str:
    if value is None:
        return "–"
    size = float(value)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"
