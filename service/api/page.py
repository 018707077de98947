"""``GET /``: the draw-a-digit page, one self-contained HTML file with no external resources."""

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

__all__ = ["router"]

PAGE = Path(__file__).resolve().parent.parent / "static" / "index.html"

router = APIRouter(include_in_schema=False)


@router.get("/")
async def page() -> FileResponse:
    return FileResponse(PAGE, media_type="text/html")
