"""The operator dashboard: ``futurecalls.dashboard(dependencies=[...])`` returns its
APIRouter (pages rendered with Jinja2, htmx for live refresh, no asset from a CDN)."""

from .router import build_router

__all__ = ["build_router"]
