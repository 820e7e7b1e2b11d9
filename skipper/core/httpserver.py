"""uvicorn's HTTP protocol with Skipper's JSON error shape for requests it cannot even parse.

uvicorn answers a malformed request (bad request line, bad header) itself, before any ASGI
app runs, with a plain-text 400. This subclass writes the same 400 as
`{"error": {"code": "bad_request", ...}}`, so a client sees one error shape everywhere.
"""

from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

BODY = json.dumps({"error": {"code": "bad_request", "message": "invalid HTTP request", "details": {}}}).encode()


class JsonErrorHttpToolsProtocol(HttpToolsProtocol):
    def send_400_response(self, msg: str) -> None:
        head = [b"HTTP/1.1 400 Bad Request\r\n"]
        for name, value in self.server_state.default_headers:
            head.extend([name, b": ", value, b"\r\n"])
        head.extend([b"content-type: application/json\r\n", b"content-length: " + str(len(BODY)).encode() + b"\r\n",
                     b"connection: close\r\n", b"\r\n", BODY])
        self.transport.write(b"".join(head))
        self.transport.close()
