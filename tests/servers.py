"""Live HTTP servers for tests: uvicorn on 127.0.0.1 (a free port) in a background thread.

On pytest's path via ``pythonpath`` in pyproject, so any test module can ``import servers``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn

from artifacts.blobstore import LocalBlobStore
from node_agent.blobs_app import create_app
from node_agent.hardware import Gpu, Hardware

#: The token of every test node (a real one is 43 random characters).
NODE_TOKEN = "node-test-token-" + "t" * 27
#: The upload limit of test nodes that check it: small, so oversize uploads are cheap to send.
TEST_MAX_BLOB = 1 << 20
#: What test nodes report, so no test imports torch to count GPUs.
TEST_HARDWARE = Hardware(cpu_count=4, memory_bytes=8 << 30, gpus=(Gpu("Test GPU", 16 << 30),))


class LiveServer:
    """uvicorn serving ``app`` on 127.0.0.1 in a daemon thread; :meth:`stop` shuts it down."""

    def __init__(self, app: Any) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.005)
        self.port: int = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)

    def __enter__(self) -> LiveServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class AppSwitch:
    """An ASGI app that forwards to :attr:`app`, so one server can serve a fresh app per test
    (starting and stopping uvicorn costs about 0.2 s)."""

    def __init__(self) -> None:
        self.app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.app is None:
            raise RuntimeError("no app is set on this server")
        await self.app(scope, receive, send)


@dataclass
class BlobNode:
    """A running blob server: its URL, token and the local store behind it."""

    server: LiveServer
    store: LocalBlobStore
    token: str

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port


def blob_app(store: LocalBlobStore, **options: Any) -> Any:
    """``create_app`` over ``store`` with test defaults (token, node id, fixed hardware)."""
    options.setdefault("token", NODE_TOKEN)
    options.setdefault("node_id", "node-test")
    options.setdefault("hardware", TEST_HARDWARE)
    return create_app(store, **options)


@contextmanager
def serve_blobs(store: LocalBlobStore, **options: Any) -> Iterator[BlobNode]:
    """A node agent blob server over ``store`` on its own server (``options`` go to
    ``create_app``); stopped at the end of the block."""
    with LiveServer(blob_app(store, **options)) as server:
        yield BlobNode(server, store, options.get("token", NODE_TOKEN))


class SharedBlobServer:
    """One live server whose blob app is replaced by each :meth:`node` call."""

    def __init__(self) -> None:
        self.switch = AppSwitch()
        self.server = LiveServer(self.switch)

    def node(self, store: LocalBlobStore, **options: Any) -> BlobNode:
        self.switch.app = blob_app(store, **options)
        return BlobNode(self.server, store, options.get("token", NODE_TOKEN))

    def stop(self) -> None:
        self.server.stop()
