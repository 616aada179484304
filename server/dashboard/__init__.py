"""The central aggregation dashboard (``fedfusion dashboard``): a read-only FastAPI app that
serves pages and a JSON API over the run store. It imports neither torch nor Flower."""

from __future__ import annotations

from server.dashboard.app import TOKEN_COOKIE, create_app, plotly_js_path

__all__ = ["TOKEN_COOKIE", "create_app", "plotly_js_path"]
