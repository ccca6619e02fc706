"""A real HTTP server of one file on 127.0.0.1, for the tests of downloads (no mocks).

It honours ``Range`` requests (or ignores them, as some servers do), records each request's
``Range`` and the byte spans it sent, and can hang up part way through a response.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Server:
    """A 127.0.0.1 server of one file; records each request's Range and the byte spans it sent.

    ``drop_after(start, stop)`` may return how many bytes of a response to send before hanging up.
    """

    def __init__(
        self, body: bytes, *, honour_range: bool = True, drop_after: Callable[[int, int], int | None] | None = None
    ):
        self.body, self.honour_range, self.drop_after = body, honour_range, drop_after
        self.ranges: list[str | None] = []
        self.sent: list[tuple[int, int]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.handle(self)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/model.safetensors"

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        if h.path != "/model.safetensors":
            h.send_error(404)
            return
        value = h.headers.get("Range")
        self.ranges.append(value)
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", value or "")
        if self.honour_range and match:
            start, stop = int(match[1]), min(int(match[2]) + 1, len(self.body))
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{stop - 1}/{len(self.body)}")
        else:
            start, stop = 0, len(self.body)
            h.send_response(200)
        h.send_header("Content-Length", str(stop - start))
        h.end_headers()
        cut = None if self.drop_after is None else self.drop_after(start, stop)
        end = stop if cut is None else start + cut
        try:
            # Small writes, so a client that hangs up early is seen to stop the transfer.
            for pos in range(start, end, 4096):
                h.wfile.write(self.body[pos : min(pos + 4096, end)])
                self.sent.append((pos, min(pos + 4096, end)))
        except (BrokenPipeError, ConnectionResetError):
            pass
        if cut is not None:
            h.close_connection = True  # the rest of the promised body never comes

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
