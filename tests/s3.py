"""A real S3 server for the tests: moto's standalone server (the one s3fs and zarr-python test
against), started by the tests on 127.0.0.1, plus a fault-injecting proxy in front of it.

`S3Server` runs `python -m moto.server` on a free loopback port; `S3Server.bucket()` makes a
fresh bucket and gives its `s3://` URL. `FaultProxy` forwards every request to the server and,
by its `faults` settings, answers a share of them 503 SlowDown or 500, resets the connection
without an answer, or answers late: the faults an object store shows, on loopback, bounded (it stops
with its fixture). Storage options point s3fs at either (`options`).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import socket
import socketserver
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the server's process, before it runs: Linux kills it when the process that started it
    dies (a test run killed by a timeout leaves no server behind; moto's ignores SIGTERM)."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG


class S3Server:
    """moto's S3 server as a process of its own on 127.0.0.1 (stopped by `stop`)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, **CREDENTIALS}
        self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("moto's S3 server exited at start")
            with contextlib.suppress(OSError):
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("moto's S3 server did not start in 60 s")

    def options(self, endpoint: str | None = None) -> dict:
        """s3fs storage options for this server (or for a proxy in front of it)."""
        return {"endpoint_url": endpoint or self.endpoint, "key": "testing", "secret": "testing",
                "client_kwargs": {"region_name": "us-east-1"}}

    def bucket(self, name: str | None = None) -> str:
        """A new empty bucket: its s3:// URL."""
        import boto3

        name = name or f"t-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                     region_name="us-east-1").create_bucket(Bucket=name)
        return f"s3://{name}"

    def stop(self) -> None:
        self.process.kill()  # moto's server ignores SIGTERM; it holds nothing worth a clean exit
        self.process.wait()


@dataclass
class Faults:
    """What the proxy does to each request: a share answered 503 SlowDown, 500 InternalError,
    reset without an answer, or answered `delay_seconds` late (done by the server, its answer
    held: a client's read timeout, never a stale write landing later); `down`
    answers every request 503 (a store that stays away); `only` limits faults, `down` included,
    to methods (e.g. {"PUT"}: writes fail, reads go through). Draws are seeded (`seed`)."""

    slow_down: float = 0.0
    server_error: float = 0.0
    reset: float = 0.0
    delay: float = 0.0
    delay_seconds: float = 0.0
    down: bool = False  # every request (of `only`'s methods) refused: a store that stays away
    only: set[str] = field(default_factory=set)
    seed: int = 0


class FaultProxy:
    """A loopback HTTP proxy to the S3 server that injects `faults` (changeable while it runs)
    and counts requests and faults by kind (`counts`: "requests", and one key per fault drawn)."""

    def __init__(self, target_port: int, faults: Faults | None = None) -> None:
        self.faults = faults or Faults()
        self.counts: dict[str, int] = {}
        self.lock = threading.Lock()
        self.rng = random.Random(self.faults.seed)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # headers and body go in two sends: without this, Nagle's algorithm holds the body
                # until the client's delayed ACK of the headers (~40 ms a request)
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, *args) -> None:  # quiet
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fault = proxy.draw(self.command)
                if fault == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    self.close_connection = True
                    self.connection.close()
                    return
                if fault in ("slow_down", "server_error", "down"):
                    code, name = (503, "SlowDown") if fault in ("slow_down", "down") else (500, "InternalError")
                    payload = (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{name}</Code>"
                               f"<Message>injected</Message></Error>").encode()
                    self.send_response(code)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection("127.0.0.1", target_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                if fault == "delay":  # the request is done, its answer late (a retry repeats it: idempotent)
                    time.sleep(proxy.faults.delay_seconds)
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                # a HEAD's answer has no body but says the object's length (s3fs's `info` reads it)
                length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", str(length if length is not None else len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
            daemon_threads = True
            allow_reuse_address = True

            def handle_error(self, request, client_address) -> None:
                # a client that gave up on an answer (its timeout, a retry) is no error of the proxy's
                if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
                    super().handle_error(request, client_address)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def draw(self, method: str) -> str | None:
        f = self.faults
        with self.lock:
            self.counts["requests"] = self.counts.get("requests", 0) + 1
            fault = None
            if f.only and method not in f.only:
                pass
            elif f.down:
                fault = "down"
            else:
                x = self.rng.random()
                for name, share in (("slow_down", f.slow_down), ("server_error", f.server_error),
                                    ("reset", f.reset), ("delay", f.delay)):
                    if x < share:
                        fault = name
                        break
                    x -= share
            if fault:
                self.counts[fault] = self.counts.get(fault, 0) + 1
            return fault

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def demo_shards(folder, url: str, n: int = 40, shards: int = 2, seed: int = 0) -> list[str]:
    """`shards` webdataset tar shards of n demo photos (`hashtagkit.data.demo`), written by the
    webdataset package as img2dataset lays them out (key.jpg + key.json {"hashtags": [...]}),
    under `url/shards/` (a bucket's URL, or a local folder); their URLs."""
    from pathlib import Path

    import webdataset as wds

    from hashtagkit import remote
    from hashtagkit.data.demo import make_demo

    folder = Path(folder)
    (folder / "photos").mkdir(parents=True, exist_ok=True)
    data = make_demo(folder / "photos", n=n, seed=seed)
    per = -(-n // shards)
    names = []
    for s in range(shards):
        name = folder / f"{s:05d}.tar"
        with wds.TarWriter(str(name)) as sink:
            for i in range(s * per, min(n, (s + 1) * per)):
                sink.write({"__key__": f"{i:06d}", "jpg": (folder / "photos" / data.paths[i]).read_bytes(),
                            "json": {"hashtags": [f"#{t}" for t in data.tags[i]]}})
        names.append(name)
    if not remote.is_remote(url):
        return [str(p) for p in names]
    fs, base = remote.filesystem(url)
    for name in names:
        fs.put_file(str(name), f"{base}/shards/{name.name}")
    return [f"{url}/shards/{name.name}" for name in names]
