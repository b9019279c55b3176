"""Run the API (or any ASGI/WSGI app) on a real socket in a background thread: for tests and notebooks.

    with serve_in_thread(create_app("my-index")) as server:
        httpx.get(f"{server.url}/health")

The socket is bound before the thread starts (port 0 = a free port chosen by the OS), so
`server.url` is valid as soon as the context is entered, and no port is ever guessed.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

START_TIMEOUT_S = 60.0


@dataclass
class ServerThread:
    url: str
    port: int
    _stop: Any
    _thread: threading.Thread

    def stop(self, timeout: float = 15.0) -> None:
        self._stop()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"server on {self.url} did not stop within {timeout:.0f} s")


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now, for a server in another process that binds it itself (a small race,
    unlike `start_asgi`, which binds before it starts)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _bound_socket(host: str, port: int) -> socket.socket:
    # proto IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say they
    # are TCP, and with Nagle on, every response whose headers and body are written apart waits
    # for the client's delayed ACK (~40 ms per request on Linux)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def start_asgi(app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
               **options: Any) -> ServerThread:
    """Start uvicorn serving `app` on host:port (0 = any free port); returns once it accepts connections.

    `options`: more uvicorn.Config options (`server.uvicorn_options(settings)`: the slow-client limits)."""
    import uvicorn

    sock = _bound_socket(host, port)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level=log_level, lifespan="on", timeout_graceful_shutdown=5, **options)
    server = uvicorn.Server(config)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
            failure.append(exc)
        finally:
            sock.close()

    thread = threading.Thread(target=run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if failure or not thread.is_alive():
            raise RuntimeError(f"the server did not start: {failure[0] if failure else 'it exited'}")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the server did not start within {START_TIMEOUT_S:.0f} s")
        time.sleep(0.02)

    def stop() -> None:
        server.should_exit = True

    return ServerThread(f"http://{host}:{port}", port, stop, thread)


def start_wsgi(app: Any, host: str = "127.0.0.1", port: int = 0) -> ServerThread:
    """Start a threaded werkzeug server for a WSGI app (the Flask page) on host:port."""
    from werkzeug.serving import make_server

    server = make_server(host, port, app, threaded=True)
    port = server.server_port
    thread = threading.Thread(target=server.serve_forever, name=f"wsgi-{port}", daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return ServerThread(f"http://{host}:{port}", port, stop, thread)


@contextmanager
def serve_in_thread(app: Any, host: str = "127.0.0.1", port: int = 0) -> Iterator[ServerThread]:
    """Context manager around start_asgi (FastAPI/Starlette) or start_wsgi (Flask)."""
    server = start_wsgi(app, host, port) if hasattr(app, "wsgi_app") else start_asgi(app, host, port)
    try:
        yield server
    finally:
        server.stop()
