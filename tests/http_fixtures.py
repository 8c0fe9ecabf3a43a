"""A local HTTP server for the download tests (they never touch the network): a folder served with Range support,
and knobs to cut responses off or fail requests."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class RangeHandler(SimpleHTTPRequestHandler):
    """Serves files with HTTP Range support; can cut the next responses off half way."""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        if server.failures:  # a busy server: the next requests get this HTTP error
            self.send_error(server.failures.pop(0))
            return
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        if (header := self.headers.get("Range")) and server.ranges:
            start = int(header.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if server.cut > 0:
            server.cut -= 1
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@contextlib.contextmanager
def serving(folder: Path) -> Iterator[tuple[ThreadingHTTPServer, str]]:
    """``folder`` served on a free local port: (the server, whose ``requests``, ``cut``, ``ranges`` and
    ``failures`` the tests read and set; its base URL, no trailing slash)."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=str(folder)))
    httpd.requests, httpd.cut, httpd.ranges, httpd.failures = [], 0, True, []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
