"""The read-only status page: ``/`` (HTML), ``/page.js``, ``/page.css`` and ``/api/status``
(JSON, what ``fitsflow status --json`` prints). GET and HEAD only; loopback unless the
configuration exposes it (recorder.expose_page)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from fitsflow.core.errors import FitsflowError
from fitsflow.core.tasks import Spawn, watch_thread
from fitsflow.recorder.config import RecorderConfig
from fitsflow.recorder.store import RecorderStore

_log = logging.getLogger(__name__)

_STATIC = {"/": ("page.html", "text/html; charset=utf-8"), "/page.js": ("page.js", "text/javascript; charset=utf-8"),
           "/page.css": ("page.css", "text/css; charset=utf-8")}
_HEADERS = {
    # Everything comes from this server; no inline script, no frames, no referrer.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class StatusPage:
    """A :class:`ThreadingHTTPServer` in a thread, as a daemon role."""

    def __init__(self, store: RecorderStore, cfg: RecorderConfig, *, spawn: Spawn) -> None:
        self.store = store
        self.cfg = cfg
        self._spawn = spawn
        self.server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.static = {path: (resources.files("fitsflow.recorder").joinpath("static", name).read_bytes(), ctype)
                       for path, (name, ctype) in _STATIC.items()}

    @property
    def url(self) -> str:
        port = self.server.server_address[1] if self.server else self.cfg.http_port
        return f"http://{self.cfg.http_bind}:{port}/"

    def snapshot(self) -> dict[str, Any]:
        return self.store.snapshot(time.time(), late_after_s=self.cfg.late_after_s,
                                   down_after_s=self.cfg.down_after_s)

    async def start(self) -> None:
        try:
            self.server = ThreadingHTTPServer((self.cfg.http_bind, self.cfg.http_port), _handler(self))
        except OSError as exc:
            raise FitsflowError(f"status page on {self.cfg.http_bind}:{self.cfg.http_port}: {exc.strerror}") from None
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, name="status-page", daemon=True)
        self._thread.start()
        self._spawn(watch_thread(self._thread, "status page", stopped=lambda: self.server is None), "status page",
                    forever=True)
        _log.info("status page at %s", self.url)

    async def stop(self) -> None:
        server, self.server = self.server, None  # first: the thread's end is asked for
        if server is not None:
            await asyncio.to_thread(server.shutdown)
            server.server_close()


def _handler(page: StatusPage) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "fitsflow-recorder"

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._respond(send_body=True)

        def do_HEAD(self) -> None:  # noqa: N802
            self._respond(send_body=False)

        def _respond(self, send_body: bool) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/api/status":
                try:
                    body, ctype = json.dumps(page.snapshot()).encode(), "application/json"
                except Exception as exc:  # noqa: BLE001 - e.g. the database is away: say so
                    _log.warning("status page: %s", exc)
                    self.send_error(HTTPStatus.SERVICE_UNAVAILABLE, "status database unavailable")
                    return
            elif path in page.static:
                body, ctype = page.static[path]
            else:
                self.send_error(HTTPStatus.NOT_FOUND)
                return
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in _HEADERS.items():
                self.send_header(k, v)
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def log_message(self, fmt: str, *args: Any) -> None:
            _log.debug("status page: " + fmt, *args)

    return Handler
