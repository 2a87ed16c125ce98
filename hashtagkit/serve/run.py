"""Running the app: the listening socket, the warning for an exposed server without a token, the
token file, uvicorn in the foreground (`hashtagkit serve`) or in a thread (tests, benchmarks)."""

from __future__ import annotations

import ipaddress
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import FastAPI

from hashtagkit.errors import InputError
from hashtagkit.serve.app import create_app


def read_token(path) -> str:
    """The bearer token from a file (surrounding whitespace removed); empty or unreadable is an error."""
    try:
        token = open(path, encoding="utf-8").read().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"--token-file {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    if not token:
        raise InputError(f"--token-file {path} is empty")
    if any(c.isspace() or not c.isprintable() for c in token):
        raise InputError(f"--token-file {path}: the token must be one line of printable characters without spaces")
    return token


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def exposure_warning(host: str, token: str | None) -> str | None:
    """The warning for a server others can reach without a token, or None."""
    if is_loopback(host) or token is not None:
        return None
    return (f"warning: serving on {host} without a token: anyone who can reach this machine can use the API "
            "(pass --token-file, or bind 127.0.0.1)")


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, opened before uvicorn starts so a busy port is a one-line error.

    Made with protocol IPPROTO_TCP, not 0: asyncio turns Nagle's algorithm off (TCP_NODELAY)
    only on connections whose socket says TCP, and with it on, the second write of each answer
    (uvicorn sends the headers, then the body) waited for the client's delayed ACK: 40 ms more
    on every request after the first of a kept-alive connection (benchmarks/results/serve.md)."""
    try:
        family, _, proto, *_ = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, socket.SOCK_STREAM, proto or socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
    except OSError as e:
        raise InputError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    return sock


GRACE_S = 30.0  # default drain on SIGTERM/Ctrl-C: queued work is started for half of it


def draining_server(config, batcher, grace: float):
    """A uvicorn Server whose first stop signal also drains the batcher: queued photos are still
    answered for grace/2 seconds, then refused with 503 + Retry-After, so the batch running then
    finishes inside uvicorn's graceful shutdown (`grace`) and no request in flight gets a 500."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            batcher.request_drain(grace / 2)
            super().handle_exit(sig, frame)

    return DrainingServer(config)


def run_server(recommender, host: str = "127.0.0.1", port: int = 8000, *, token: str | None = None,
               log_level: str = "info", grace: float = GRACE_S, **options) -> None:
    """Serve until Ctrl-C/SIGTERM, then drain for at most `grace` seconds (see `draining_server`);
    `options` go to `create_app` (max_batch, max_wait_ms, max_upload_mb)."""
    import uvicorn

    warning = exposure_warning(host, token)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    app = create_app(recommender, token=token, **options)
    sock = listen(host, port)
    bound = sock.getsockname()[1]
    url = f"http://{f'[{host}]' if ':' in host else host}:{bound}"
    print(f"hashtagkit serve: {url}/ (API {url}/v1/recommend, documentation {url}/docs"
          f"{', token required' if token else ''}); Ctrl-C stops", file=sys.stderr, flush=True)
    # requests at once are bounded by the app (a JSON 503 beyond MAX_REQUESTS): the memory uploads can hold
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=grace, server_header=False)
    draining_server(config, app.state.batcher, grace).run(sockets=[sock])


@contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0) -> Iterator[str]:
    """Run `app` on uvicorn in a background thread (tests, benchmarks, notebooks) and yield its
    base URL; port 0 picks a free port. Stopped (and joined) on exit."""
    import uvicorn

    sock = listen(host, port)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="hashtagkit-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"the server did not start within {timeout:g} s")
        time.sleep(0.01)
    try:
        yield f"http://{f'[{host}]' if ':' in host else host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
