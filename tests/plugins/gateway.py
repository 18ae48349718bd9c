"""A local HTTP server standing in for the SMS gateway: it takes messages as the gateway's
contract says (see the ``sms_gateway`` package) and keeps what it was sent."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

API_KEY = "sms-gateway-key-0123456789"


@dataclass
class Sms:
    sender: str
    to: str
    text: str
    reference: str


@dataclass
class Gateway:
    """Answers 201 with an id; a number in ``dead`` gets 400 ``invalid_number``."""

    dead: set[str] = field(default_factory=set)
    outbox: list[Sms] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def __enter__(self) -> Gateway:
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path != "/v1/messages":
                    self.answer(404, {"error": "not_found", "message": self.path})
                elif self.headers.get("Authorization") != f"Bearer {API_KEY}":
                    self.answer(401, {"error": "unauthorized", "message": "bad API key"})
                elif body.get("to") in gateway.dead:
                    with gateway._lock:
                        gateway.refused.append(body["to"])
                    self.answer(400, {"error": "invalid_number", "message": "no such number"})
                else:
                    with gateway._lock:
                        gateway.outbox.append(
                            Sms(body["from"], body["to"], body["text"], body["reference"])
                        )
                        number = len(gateway.outbox)
                    self.answer(201, {"id": f"sms-{number}"})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
