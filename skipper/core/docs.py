"""The API docs page (`/docs`): Swagger UI on this server's `openapi.json`, its assets shipped in the package.

The page and its assets are open routes, like `openapi.json`: they describe the API, they
do not use it. A Content-Security-Policy keeps the page from loading or sending anything
to another origin.
"""

from __future__ import annotations

import html
from pathlib import Path

from pydantic import BaseModel, Field
from starlette.responses import FileResponse, HTMLResponse, Response

from skipper.core.auth import OPEN
from skipper.core.errors import NotFound
from skipper.core.routing import Call, Endpoint, Reply

ASSETS = Path(__file__).resolve().parent / "static" / "swagger-ui"
SERVED = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "docs.js": "text/javascript",
          "LICENSE": "text/plain", "NOTICE": "text/plain"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>{title} API</title>
  <link rel="stylesheet" href="{base}/docs/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui" data-spec="{base}/openapi.json"></div>
  <script src="{base}/docs/swagger-ui-bundle.js"></script>
  <script src="{base}/docs/docs.js"></script>
</body>
</html>
"""


class AssetPath(BaseModel):
    asset: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$", examples=["swagger-ui.css"])


def docs_endpoints(base: str, title: str) -> list[Endpoint]:
    """The page and its assets, relative to the API base (`base` is that base, for links)."""
    page = PAGE.format(title=html.escape(title), base=html.escape(base))

    async def docs_page(call: Call[None, None, None]) -> Response:
        return HTMLResponse(page, headers={"content-security-policy": CSP, "x-content-type-options": "nosniff"})

    async def docs_asset(call: Call[AssetPath, None, None]) -> Response:
        name = call.path.asset
        if name not in SERVED:
            raise NotFound(f"no docs asset {name!r}", details={"asset": name})
        return FileResponse(ASSETS / name, media_type=SERVED[name], headers={
            "cache-control": "public, max-age=86400", "x-content-type-options": "nosniff"})

    return [
        Endpoint("GET", "/docs", docs_page, scope=OPEN, summary="This API's documentation (Swagger UI).", tags=("service",),
                 responses={200: Reply(description="HTML page", media_type="text/html")}),
        Endpoint("GET", "/docs/{asset}", docs_asset, scope=OPEN, path_params=AssetPath, in_schema=False),
    ]
