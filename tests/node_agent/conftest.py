"""Node agent fixtures: a live blob server (uvicorn on 127.0.0.1) over a fresh local store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from servers import NODE_TOKEN, TEST_MAX_BLOB, BlobNode, SharedBlobServer

from artifacts.blobstore import LocalBlobStore


@pytest.fixture(scope="session")
def shared_server() -> Iterator[SharedBlobServer]:
    server = SharedBlobServer()
    yield server
    server.stop()


@pytest.fixture
def node(shared_server: SharedBlobServer, tmp_path: Path) -> BlobNode:
    """A blob server over a fresh store (upload limit ``TEST_MAX_BLOB``, name "test")."""
    return shared_server.node(
        LocalBlobStore(tmp_path / "node"), max_blob=TEST_MAX_BLOB, name="test"
    )


@pytest.fixture
def http(node: BlobNode) -> Iterator[httpx.Client]:
    """A client of ``node`` sending its token."""
    headers = {"Authorization": f"Bearer {NODE_TOKEN}"}
    with httpx.Client(base_url=node.url, headers=headers, timeout=30) as client:
        yield client


@pytest.fixture
def anonymous(node: BlobNode) -> Iterator[httpx.Client]:
    """A client of ``node`` without a token."""
    with httpx.Client(base_url=node.url, timeout=30) as client:
        yield client
