"""A checkpoint server on 127.0.0.1 for download tests: serves bytes, honours ``Range``, and can
cut a response short (announcing the full length) to play a dropped connection."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class ServedFiles:
    files: dict[str, bytes] = field(default_factory=dict)
    cut_after: int | None = None  # send at most this many body bytes of the next response, then close
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    base_url: str = ""


@contextmanager
def serve(files: dict[str, bytes]) -> Iterator[ServedFiles]:
    state = ServedFiles(dict(files))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append((self.path, self.headers.get("Range")))
            data = state.files.get(self.path)
            if data is None:
                self.send_error(404)
                return
            start = 0
            header = self.headers.get("Range")
            if header and header.startswith("bytes="):
                start = int(header.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if state.cut_after is not None:
                body, state.cut_after = body[: state.cut_after], None
                self.wfile.write(body)
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    with serving(Handler) as base_url:
        state.base_url = base_url
        yield state


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """``handler`` served from a thread on a free loopback port; yields the server's base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
