"""The web page: ``GET /`` serves ``static/index.html``; ``GET /static/...`` its script, style and
the bundled example records.

The page is plain HTML, CSS and JavaScript (no build step): it uploads a dropped file, or a
bundled example, to the same ``POST /predict/.../file`` endpoints a program calls, and draws the
answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

__all__ = ["STATIC_DIR", "web_router"]

STATIC_DIR: Final = Path(__file__).resolve().with_name("static")
_SERVED_SUFFIXES: Final = {".html", ".js", ".css", ".hea", ".dat", ".atr", ".edf", ".csv", ".md"}

web_router = APIRouter(tags=["page"], include_in_schema=False)


@web_router.get("/")
async def index() -> FileResponse:
    """The web page."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


@web_router.get("/static/{path:path}")
async def static_file(path: str) -> FileResponse:
    """A file of the page (script, style, example record); 404 for anything outside it."""
    target = (STATIC_DIR / path).resolve()
    if (
        not target.is_relative_to(STATIC_DIR)
        or not target.is_file()
        or target.suffix.lower() not in _SERVED_SUFFIXES
    ):
        raise HTTPException(404, f"no page file {path!r}")
    media = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}.get(
        target.suffix.lower(), "application/octet-stream"
    )
    return FileResponse(target, media_type=media)
