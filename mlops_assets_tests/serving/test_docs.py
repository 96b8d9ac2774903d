"""``/docs`` and ``/redoc`` work offline: their pages reference only the service's own URLs, and each of those URLs
answers 200 with the JavaScript, CSS, icon or OpenAPI document the page needs."""

from __future__ import annotations

import http.client
import re

import pytest

from mlops_assets.core.settings import Settings
from mlops_assets.serving.app import DOCS_STATIC
from mlops_assets_tests.serving.conftest import running

#: Every URL a docs page loads: script and stylesheet sources, icons, Swagger UI's ``url`` and ReDoc's ``spec-url``.
URL_PATTERNS = (r'(?:src|href|spec-url)="([^"]*)"', r"url: *'([^']*)'")
CONTENT_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png", ".json": "application/json"}


def _get(port: int, path: str) -> tuple[int, str, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_everything_from_the_service(served: Settings, page: str) -> None:
    with running(served) as server:
        status, kind, body = _get(server.port, page)
        assert status == 200 and kind.startswith("text/html")
        html = body.decode()
        assert "http://" not in html and "https://" not in html  # no CDN, no Google Fonts, no validator
        urls = {u for pattern in URL_PATTERNS for u in re.findall(pattern, html)}
        assets = {u for u in urls if u.startswith(f"{DOCS_STATIC}/")}
        assert "/openapi.json" in urls and any(u.endswith(".js") for u in assets)
        if page == "/docs":
            assert any(u.endswith(".css") for u in assets)
        for url in urls:
            assert url.startswith("/") and not url.startswith("//"), url
            status, kind, content = _get(server.port, url)
            suffix = url[url.rfind(".") :]
            assert status == 200 and CONTENT_TYPES[suffix] in kind and len(content) > 1000, (url, status, kind)


def test_the_swagger_ui_served_renders_openapi_3_1(served: Settings) -> None:
    """FastAPI writes OpenAPI 3.1, which Swagger UI renders from version 5 on (4.x, as in ``swagger-ui-bundle``,
    refuses any document whose version is not 3.0.x); a missing asset is a 404."""
    with running(served) as server:
        _, _, schema = _get(server.port, "/openapi.json")
        assert b'"openapi":"3.1' in schema.replace(b" ", b"")
        status, _, script = _get(server.port, f"{DOCS_STATIC}/swagger-ui-bundle.js")
        assert status == 200 and b"isOAS31" in script
        assert _get(server.port, f"{DOCS_STATIC}/nothing.js")[0] == 404
