"""The outage drill's health watch: when a killed server answered again, and nothing before."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from deploy.drill import HealthWatch
from deploy.local import find_free_port
from deploy.processes import LocalStackError


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def port() -> int:
    return find_free_port()


def _serve_after(port: int, delay_s: float, servers: list[ThreadingHTTPServer]) -> threading.Thread:
    def run() -> None:
        time.sleep(delay_s)
        server = ThreadingHTTPServer(("127.0.0.1", port), _Ok)
        servers.append(server)
        server.serve_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_the_watch_reports_the_first_answer_after_the_server_came_back(port):
    servers: list[ThreadingHTTPServer] = []
    began = time.monotonic()
    try:
        with HealthWatch(f"http://127.0.0.1:{port}/health", any_status=False) as watch:
            _serve_after(port, 0.5, servers)
            answered_at = watch.wait(10)
    finally:
        for server in servers:
            server.shutdown()
    assert 0.5 <= answered_at - began < 2.0


def test_a_server_that_never_answers_is_an_error(port):
    watch = HealthWatch(f"http://127.0.0.1:{port}/health", any_status=False)
    with watch, pytest.raises(LocalStackError, match=r"did not answer within 0\.3s"):
        watch.wait(0.3)
