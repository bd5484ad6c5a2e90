"""A read-only container registry (the Docker Registry HTTP API v2, the part a pull uses) serving an OCI image
layout from disk, on a loopback port in a thread: the tests' engine pulls from it as from any registry.

``podman push IMAGE oci:DIR:TAG`` writes the layout (index.json and blobs/sha256/...); every repository name serves
the same layout, and a tag that is not in it answers ``MANIFEST_UNKNOWN`` as a real registry does.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class _Handler(BaseHTTPRequestHandler):
    server: _Registry

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        parts = self.path.split("?")[0].strip("/").split("/")
        if parts == ["v2"]:
            return self._send(200, b"{}", "application/json", body)
        if len(parts) >= 4 and parts[0] == "v2" and parts[-2] in ("manifests", "blobs"):
            found = self.server.lookup(parts[-2], parts[-1])
            if found is not None:
                data, kind, digest = found
                return self._send(200, data, kind, body, digest)
            code = "MANIFEST_UNKNOWN" if parts[-2] == "manifests" else "BLOB_UNKNOWN"
            error = {"errors": [{"code": code, "message": f"{parts[-2][:-1]} unknown", "detail": parts[-1]}]}
            return self._send(404, json.dumps(error).encode(), "application/json", body)
        return self._send(404, b'{"errors": [{"code": "UNSUPPORTED", "message": "not here"}]}', "application/json",
                          body)

    def _send(self, status: int, data: bytes, kind: str, body: bool, digest: str | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Docker-Distribution-API-Version", "registry/2.0")
        if digest:
            self.send_header("Docker-Content-Digest", digest)
        self.end_headers()
        if body:
            self.wfile.write(data)


class _Registry(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, layout: Path, port: int) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.layout = layout

    def lookup(self, what: str, ref: str) -> tuple[bytes, str, str] | None:
        index = json.loads((self.layout / "index.json").read_text())
        if what == "manifests" and not ref.startswith("sha256:"):
            tagged = [m for m in index["manifests"]
                      if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref]
            if not tagged:
                return None
            ref = tagged[0]["digest"]
        blob = self.layout / "blobs" / "sha256" / ref.removeprefix("sha256:")
        if not blob.is_file():
            return None
        data = blob.read_bytes()
        kind = "application/octet-stream"
        if what == "manifests":
            kind = json.loads(data).get("mediaType", "application/vnd.oci.image.manifest.v1+json")
        return data, kind, ref


class LocalRegistry:
    """``with LocalRegistry(layout, port) as reg:`` serves ``layout`` at ``reg.address`` (127.0.0.1:PORT); the
    port is chosen before the engine starts, which must list it as an insecure (plain HTTP) registry."""

    def __init__(self, layout: Path, port: int = 0) -> None:
        self.server = _Registry(layout, port)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> LocalRegistry:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
