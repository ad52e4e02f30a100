"""What `nmtkit serve` answers while it starts: the port is bound first, and until the model
is loaded every request gets 503, `/health` with `{"status": "loading"}`.

Importing torch and the web stack and loading the checkpoint take seconds (7-12 s on 2 busy
cores). Listening from the first moment lets a load balancer tell a server that is starting
(503 "loading": wait) from one that is down (connection refused), and a person's request gets
a clear answer instead of a refused connection. Only the standard library is imported here, so
this starts before torch."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from nmtkit.errors import NMTKitError

RETRY_AFTER_S = 2


def listen(host: str, port: int) -> socket.socket:
    """The server's listening socket, bound now: a port in use or an unknown host is one clear
    error before anything slow."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return socket.create_server((host, port), family=family)
    except OSError as err:
        raise NMTKitError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None


class _Loading(BaseHTTPRequestHandler):
    """503 for everything, each on its own connection (closed after the answer)."""

    protocol_version = "HTTP/1.0"

    def _answer(self) -> None:
        length = self.headers.get("Content-Length", "")
        if length.isdigit() and int(length) <= 1 << 20:  # read what was sent, so closing is clean
            self.rfile.read(int(length))
        if self.path.split("?")[0] == "/health":
            body = {"status": "loading"}
        else:
            body = {"detail": "the server is starting: the model is loading; try again in a few "
                              "seconds (GET /health says \"ok\" when it is ready)"}
        data = json.dumps(body).encode()
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Retry-After", str(RETRY_AFTER_S))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = do_OPTIONS = do_PATCH = _answer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's name
        pass  # no line per health check


@contextmanager
def answering_loading(listener: socket.socket) -> Iterator[None]:
    """Within the block, a thread answers requests on `listener` with 503 "loading"; after it,
    the socket is left open, its waiting connections queued, for the real server."""
    server = ThreadingHTTPServer(listener.getsockname()[:2], _Loading, bind_and_activate=False)
    server.socket.close()  # the one it made: ours is already bound and listening
    server.socket = listener
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="nmtkit-loading", daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()  # stops accepting; the socket stays open (no server_close)
        thread.join()
