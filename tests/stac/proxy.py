"""A tiny fault-injecting HTTP proxy on 127.0.0.1, in front of the real STAC test server.

It forwards every request to the target (keeping the Host header, so the API's links
point back at the proxy) and can, for the next N matching requests, answer with an
error status instead, or wait before forwarding (to trip a client timeout). It can also
hide the filter extension from the conformance classes (a catalog without CQL2), and
make every next link of a search lead back to the same page (a paging loop). It
records every request: method, path, status and JSON body once answered, and method,
path and time as soon as it arrives (``arrivals``: a request the client gave up on is
answered late, after the client has moved on).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Fault:
    """Answer the next ``times`` requests matching method and path with ``status``/a delay."""

    method: str
    path: str
    times: int
    status: int | None = None
    delay: float = 0.0


@dataclass
class Record:
    """One request the proxy saw."""

    method: str
    path: str
    status: int
    body: Any = None


@dataclass
class Arrival:
    """One request as it arrived, before any fault or forwarding."""

    method: str
    path: str
    time: float
    """``time.monotonic()`` at arrival."""


@dataclass
class Proxy:
    """The running proxy; ``url`` is its root."""

    target: str
    url: str = ""
    faults: list[Fault] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    arrivals: list[Arrival] = field(default_factory=list)
    hide_filter: bool = False
    loop_pages: bool = False
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, method: str, path: str, times: int, status: int) -> None:
        """Answer the next ``times`` ``method path`` requests with ``status``."""
        self.faults.append(Fault(method, path, times, status=status))

    def delay(self, method: str, path: str, times: int, seconds: float) -> None:
        """Hold the next ``times`` ``method path`` requests for ``seconds`` before answering."""
        self.faults.append(Fault(method, path, times, delay=seconds))

    def reset(self) -> None:
        """Forget faults and records."""
        with self._lock:
            self.faults.clear()
            self.records.clear()
            self.arrivals.clear()
        self.hide_filter = False
        self.loop_pages = False

    def seen(self, method: str | None = None, path: str | None = None) -> list[Record]:
        """Records matching method and path (prefix)."""
        return [
            r
            for r in self.records
            if (method is None or r.method == method) and (path is None or r.path.startswith(path))
        ]

    def arrived(self, method: str, path: str) -> list[Arrival]:
        """Arrivals of ``method`` requests whose path starts with ``path``."""
        with self._lock:
            return [a for a in self.arrivals if a.method == method and a.path.startswith(path)]

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.times > 0 and fault.method == method and path.startswith(fault.path):
                    fault.times -= 1
                    return fault
        return None

    def start(self) -> Proxy:
        """Listen on a free port of 127.0.0.1 (in a daemon thread)."""
        proxy = self
        target = urlsplit(self.target)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = None
                if raw:
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        body = raw.decode(errors="replace")
                path = urlsplit(self.path).path
                with proxy._lock:
                    proxy.arrivals.append(Arrival(self.command, path, time.monotonic()))
                fault = proxy._take_fault(self.command, path)
                if fault is not None and fault.delay:
                    time.sleep(fault.delay)
                if fault is not None and fault.status is not None:
                    payload = json.dumps({"code": "Injected", "description": "fault"}).encode()
                    self._send(fault.status, {"Content-Type": "application/json"}, payload)
                    proxy.records.append(Record(self.command, path, fault.status, body))
                    return
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("accept-encoding", "connection", "content-length")
                }
                headers["Accept-Encoding"] = "identity"
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                try:
                    conn.request(self.command, self.path, body=raw or None, headers=headers)
                    response = conn.getresponse()
                    payload = response.read()
                    status = response.status
                    out = {
                        k: v
                        for k, v in response.getheaders()
                        if k.lower() not in ("transfer-encoding", "connection", "content-length")
                    }
                except OSError:  # the target is gone (a late, delayed request): a bad gateway
                    self._send(502, {}, b"")
                    return
                finally:
                    conn.close()
                if proxy.hide_filter and path.rstrip("/") in ("", "/conformance"):
                    doc = json.loads(payload)
                    doc["conformsTo"] = [
                        c
                        for c in doc.get("conformsTo", [])
                        if "filter" not in c and "cql2" not in c
                    ]
                    payload = json.dumps(doc).encode()
                if proxy.loop_pages and path == "/search" and status == 200:
                    doc = json.loads(payload)  # every next link leads back to this page
                    for link in doc.get("links", []):
                        if link.get("rel") == "next":
                            link.update(method="POST", body=body, merge=False)
                            link["href"] = f"{proxy.url}/search"
                    payload = json.dumps(doc).encode()
                self._send(status, out, payload)
                proxy.records.append(Record(self.command, path, status, body))

            def _send(self, status: int, headers: dict[str, str], payload: bytes) -> None:
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out
                    pass

            do_GET = do_POST = _handle  # noqa: N815

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
