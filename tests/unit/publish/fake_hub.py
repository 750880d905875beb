"""A local stand-in for the Hugging Face Hub's HTTP API, enough for ``HfApi.create_repo``,
``create_branch`` and ``upload_folder`` (regular, non-LFS uploads): point ``HF_ENDPOINT`` (or
``HfApi(endpoint=...)``) at :attr:`FakeHub.url` and read what arrived in :attr:`FakeHub.requests` and
:attr:`FakeHub.files`. It serves from a thread of the test process; a subprocess reaches it over
localhost. ``status`` makes every answer that HTTP status instead (401: a token the Hub refuses); ``existing``
names repositories already there (``{repo_id: private}``): creating one answers 409, its info is served."""

from __future__ import annotations

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeHub:
    def __init__(self, status: int | None = None, existing: dict[str, bool] | None = None) -> None:
        self.status = status
        self.existing = dict(existing or {})
        self.requests: list[dict] = []  # {"method", "path", "headers", "json"}
        self.files: dict[str, bytes] = {}  # path in repo -> content, from the commits
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _reply(self, status: int, payload: dict) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                hub.record(self, b"")
                m = re.fullmatch(r"/api/models/([^/]+/[^/]+)", self.path.split("?")[0])
                if m and m.group(1) in hub.existing and hub.status is None:
                    repo = m.group(1)
                    self._reply(200, {"id": repo, "private": hub.existing[repo], "sha": "0" * 40})
                    return
                self._reply(404, {"error": "not in the fake hub"})

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    body = hub.read_chunked(self.rfile)
                status, payload = hub.answer(self.path, body)
                hub.record(self, body)
                self._reply(status, payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @staticmethod
    def read_chunked(rfile) -> bytes:
        out = b""
        while True:
            size = int(rfile.readline().strip() or b"0", 16)
            if size == 0:
                rfile.readline()
                return out
            out += rfile.read(size)
            rfile.readline()

    def answer(self, path: str, body: bytes) -> tuple[int, dict]:
        path = path.split("?")[0]
        if self.status is not None:
            return self.status, {"error": f"the fake hub answers {self.status}"}
        if path == "/api/repos/create":
            req = json.loads(body or b"{}")
            repo = f"{req.get('organization')}/{req.get('name')}"
            if repo in self.existing:
                return 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo}"}
            self.existing[repo] = req.get("visibility") == "private" or req.get("private") is True
            return 200, {"url": f"{self.url}/{repo}", "name": repo, "id": repo}
        if path == "/api/validate-yaml":  # the Hub checks a README's metadata before the upload
            return 200, {"errors": [], "warnings": []}
        if re.fullmatch(r"/api/models/[^/]+/[^/]+/branch/.+", path):
            return 200, {}
        if re.fullmatch(r"/api/models/[^/]+/[^/]+/preupload/.+", path):
            files = json.loads(body or b"{}").get("files", [])
            return 200, {
                "files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
            }
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/(.+)", path)
        if m:
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item.get("key") == "file":
                    v = item["value"]
                    self.files[v["path"]] = base64.b64decode(v["content"])
            return 200, {"commitUrl": f"{self.url}/{m.group(1)}/commit/{'0' * 40}", "commitOid": "0" * 40}
        return 404, {"error": f"not in the fake hub: {path}"}

    def record(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        try:
            payload = json.loads(body) if body else None
        except ValueError:  # a commit's NDJSON
            payload = None
        entry = {
            "method": handler.command,
            "path": handler.path,
            "auth": handler.headers.get("Authorization"),
            "json": payload if isinstance(payload, dict) else None,
        }
        self.requests.append(entry)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
