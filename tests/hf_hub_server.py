"""A Hugging Face hub mirror on 127.0.0.1 for download tests (``HF_ENDPOINT=<base_url>``).

Serves what ``huggingface_hub.snapshot_download`` asks for, one commit per repo:

* ``GET /api/models/{repo}/revision/{rev}`` — the repo's commit (``sha``) and files (``siblings``);
* ``GET /api/models/{repo}/tree/{rev}`` — the file list with sizes and blob ids;
* ``HEAD|GET /{repo}/resolve/{rev}/{file}`` — the bytes, with ``X-Repo-Commit``, ``ETag`` and
  ``Content-Length`` (and ``Range`` on GET).

``gated`` repos answer 401 with ``X-Error-Code: GatedRepo`` unless the request carries ``token``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from tests.weights_server import serving

TOKEN = "hf_test_token"


@dataclass
class Hub:
    repos: dict[str, dict[str, bytes]]
    gated: set[str] = field(default_factory=set)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path)
    base_url: str = ""

    def commit(self, repo: str) -> str:
        digest = hashlib.sha1(repo.encode())
        for name, data in sorted(self.repos[repo].items()):
            digest.update(name.encode() + hashlib.sha1(data).digest())
        return digest.hexdigest()


_API = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/(?P<kind>revision|tree)/(?P<rev>[^/?]+)")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>[^?]+)")


@contextmanager
def serve_hub(repos: dict[str, dict[str, bytes]], gated: set[str] | None = None) -> Iterator[Hub]:
    hub = Hub({repo: dict(files) for repo, files in repos.items()}, set(gated or ()))

    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def _answer(self, body: bool) -> None:
            hub.requests.append((self.command, self.path))
            api, resolve = _API.match(self.path), _RESOLVE.match(self.path)
            match = api or resolve
            if match is None or match["repo"] not in hub.repos:
                return self._error(404, "RepoNotFound", "Repository not found")
            repo = match["repo"]
            if repo in hub.gated and self.headers.get("Authorization") != f"Bearer {TOKEN}":
                return self._error(401, "GatedRepo", f"Access to model {repo} is restricted.")
            files = hub.repos[repo]
            if api is not None:
                if api["kind"] == "revision":
                    info = {
                        "id": repo,
                        "sha": hub.commit(repo),
                        "siblings": [{"rfilename": f} for f in files],
                    }
                    return self._json(info)
                tree = [
                    {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                    for name, data in files.items()
                ]
                return self._json(tree)
            data = files.get(resolve["file"]) if resolve else None
            if data is None:
                return self._error(404, "EntryNotFound", "Entry not found")
            start = 0
            header = self.headers.get("Range")
            if body and header and header.startswith("bytes="):
                start = int(header.removeprefix("bytes=").split("-")[0])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("X-Repo-Commit", hub.commit(repo))
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            if body:
                self.wfile.write(data[start:])

        def _json(self, value: object) -> None:
            payload = json.dumps(value).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(payload)

        def _error(self, status: int, code: str, message: str) -> None:
            payload = json.dumps({"error": message}).encode()
            self.send_response(status)
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            pass

    with serving(Handler) as base_url:
        hub.base_url = base_url
        yield hub
