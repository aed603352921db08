"""The replicated blob store: the shared conformance suite over three local replicas, then
placement, acknowledged writes, failover, read repair and ``repair()``.

Dead and lying nodes are real local stores with a switch (``_FaultyStore``): down, they raise
``ConnectionError`` from every primitive; lying, they serve one flipped bit from ``_read``.
"""

from __future__ import annotations

import hashlib
import pickle  # noqa: TID251 - a same-process round trip of our own object, nothing received
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from artifacts.blobstore import (
    BlobStat,
    BlobStore,
    LocalBlobStore,
    RepairReport,
    Replica,
    ReplicatedBlobStore,
)
from artifacts.cid import CID, compute_cid
from artifacts.errors import (
    ArtifactError,
    BlobNotFoundError,
    CorruptBlobError,
    ReadOnlyError,
    ReplicationError,
)
from artifacts.testing import BlobStoreTests


class _FaultyStore(LocalBlobStore):
    """A local store that can be switched off (connection refused) or made to lie."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.down = False
        self.lying = False
        self.calls = 0

    def _check(self) -> None:
        self.calls += 1
        if self.down:
            raise ConnectionError(f"connection refused by {self.root.name}")

    def _read(self, cid: CID) -> bytes:
        self._check()
        data = super()._read(cid)
        return _flip(data) if self.lying and data else data

    def _write(self, cid: CID, data: bytes | memoryview) -> None:
        self._check()
        super()._write(cid, data)

    def stat(self, cid: str | CID) -> BlobStat:
        self._check()
        return super().stat(cid)

    def _delete(self, cid: CID) -> bool:
        self._check()
        return super()._delete(cid)

    def iter_cids(self) -> Iterator[CID]:
        self._check()
        return super().iter_cids()


def _flip(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :]


def _damage_file(store: LocalBlobStore, cid: CID, data: bytes) -> None:
    """Replace the stored file under ``cid`` with ``data``, bypassing the store."""
    path = store.path_of(cid)
    path.unlink(missing_ok=True)  # blob files are read-only (0o444): replace, don't open
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _local(rep: Replica) -> LocalBlobStore:
    assert isinstance(rep.store, LocalBlobStore)
    return rep.store


def _holds_good_copy(store: BlobStore, cid: CID) -> bool:
    try:
        store.get(cid)
    except (BlobNotFoundError, CorruptBlobError):
        return False
    return True


def _cids(n: int) -> list[CID]:
    return [compute_cid(f"blob {i}".encode()) for i in range(n)]


# -- the conformance suite --------------------------------------------------------------------
class TestReplicatedBlobStore(BlobStoreTests[ReplicatedBlobStore]):
    """Three local replicas, r=2: the whole contract every backend has."""

    @pytest.fixture
    def store(self, tmp_path: Path) -> ReplicatedBlobStore:
        replicas = [Replica(f"node-{n}", LocalBlobStore(tmp_path / n)) for n in "abc"]
        return ReplicatedBlobStore(replicas, r=2)

    def open_read_only(self, store: ReplicatedBlobStore) -> ReplicatedBlobStore:
        replicas = [
            Replica(rep.node_id, LocalBlobStore(_local(rep).root, read_only=True))
            for rep in store.replicas
        ]
        return ReplicatedBlobStore(replicas, r=store.r, read_only=True)

    def corrupt(self, store: ReplicatedBlobStore, cid: CID, data: bytes) -> None:
        # Every copy: with one good copy left the store would (rightly) still serve the blob.
        held = [rep for rep in store.replicas if _local(rep).path_of(cid).exists()]
        assert held, "corrupt() is called on a stored blob"
        for rep in held:
            _damage_file(_local(rep), cid, data)


# -- the replicated store's own behaviour -----------------------------------------------------
@pytest.fixture
def nodes(tmp_path: Path) -> list[Replica]:
    return [Replica(f"node-{n}", _FaultyStore(tmp_path / n)) for n in "abc"]


def _faulty(rep: Replica) -> _FaultyStore:
    assert isinstance(rep.store, _FaultyStore)
    return rep.store


def _by_id(replicas: list[Replica]) -> dict[str, _FaultyStore]:
    return {rep.node_id: _faulty(rep) for rep in replicas}


class TestPlacement:
    def test_follows_the_documented_formula(self) -> None:
        ids = ["alpha", "beta", "gamma", "delta"]
        store = ReplicatedBlobStore(
            [Replica(i, LocalBlobStore("/unused", read_only=True)) for i in ids]
        )
        for cid in _cids(20):
            weight = {
                i: hashlib.sha256(f"{i}\n{cid}".encode()).hexdigest()  # printf '%s\n%s' | sha256sum
                for i in ids
            }
            expected = sorted(ids, key=lambda i: weight[i], reverse=True)
            assert store.ranking(cid) == expected
            assert store.placement(cid) == expected[:2]
            assert store.placement(str(cid)) == expected[:2]

    def test_deterministic_and_independent_of_list_order(self) -> None:
        reps = [Replica(f"n{i}", LocalBlobStore("/unused", read_only=True)) for i in range(5)]
        one = ReplicatedBlobStore(reps, r=3)
        other = ReplicatedBlobStore(list(reversed(reps)), r=3)
        for cid in _cids(50):
            assert one.placement(cid) == other.placement(cid) == one.placement(cid)
            assert len(set(one.placement(cid))) == 3

    def test_balanced(self) -> None:
        reps = [Replica(f"node-{n}", LocalBlobStore("/unused", read_only=True)) for n in "abc"]
        store = ReplicatedBlobStore(reps, r=2)
        cids = _cids(1000)
        first = Counter(store.placement(cid)[0] for cid in cids)
        homes = Counter(node for cid in cids for node in store.placement(cid))
        assert set(first) == {"node-a", "node-b", "node-c"}
        for node in first:
            assert 270 <= first[node] <= 400, first  # ~333 each
            assert 600 <= homes[node] <= 734, homes  # ~667 each

    @pytest.mark.parametrize("count", [3, 5])
    def test_removing_a_node_moves_only_its_cids(self, count: int) -> None:
        reps = [
            Replica(f"node-{i}", LocalBlobStore("/unused", read_only=True)) for i in range(count)
        ]
        before = ReplicatedBlobStore(reps, r=2)
        after = ReplicatedBlobStore(reps[:-1], r=2)
        gone = reps[-1].node_id
        moved = 0
        for cid in _cids(1000):
            old, new = before.placement(cid), after.placement(cid)
            if gone in old:
                moved += 1
                kept = [node for node in old if node != gone]
                assert new[: len(kept)] == kept  # survivors keep their place, one newcomer
            else:
                assert new == old
        assert 0 < moved < 1000

    def test_adding_a_node_moves_cids_only_onto_it(self) -> None:
        reps = [Replica(f"node-{i}", LocalBlobStore("/unused", read_only=True)) for i in range(5)]
        before = ReplicatedBlobStore(reps[:4], r=2)
        after = ReplicatedBlobStore(reps, r=2)
        for cid in _cids(500):
            old, new = set(before.placement(cid)), set(after.placement(cid))
            assert new - old <= {"node-4"}

    def test_bad_configuration_is_refused(self) -> None:
        rep = Replica("a", LocalBlobStore("/unused", read_only=True))
        with pytest.raises(ValueError, match="at least one"):
            ReplicatedBlobStore([])
        with pytest.raises(ValueError, match="unique"):
            ReplicatedBlobStore([rep, rep])
        with pytest.raises(ValueError, match="non-empty"):
            ReplicatedBlobStore([Replica("", rep.store)])
        for r in (0, -1):
            with pytest.raises(ValueError, match="replication factor"):
                ReplicatedBlobStore([rep], r=r)


class TestWrites:
    def test_put_makes_r_copies_on_the_home_nodes(self, nodes: list[Replica]) -> None:
        store = ReplicatedBlobStore(nodes, r=2)
        by_id = _by_id(nodes)
        for i in range(20):
            cid = store.put(f"copy {i}".encode())
            holders = {node for node, s in by_id.items() if s.has(cid)}
            assert holders == set(store.placement(cid))

    def test_one_dead_node_still_gives_r_copies(self, nodes: list[Replica]) -> None:
        store = ReplicatedBlobStore(nodes, r=2)
        by_id = _by_id(nodes)
        by_id["node-b"].down = True
        for i in range(20):
            data = f"with b down {i}".encode()
            cid = store.put(data)
            live = [s for node, s in by_id.items() if node != "node-b"]
            assert all(s.get(cid) == data for s in live)  # b's place taken by the third node
        assert "node-b" in store.suspects
        assert "unavailable" in store.suspects["node-b"]

    def test_two_dead_nodes_refuse_the_put(self, nodes: list[Replica]) -> None:
        store = ReplicatedBlobStore(nodes, r=2)
        by_id = _by_id(nodes)
        by_id["node-a"].down = by_id["node-c"].down = True
        data = b"not enough nodes"
        cid = compute_cid(data)
        with pytest.raises(ReplicationError, match="stored 1 of 2 copies") as excinfo:
            store.put(data)
        err = excinfo.value
        assert isinstance(err, ArtifactError)
        assert isinstance(err, OSError)
        assert (err.stored, err.required) == (1, 2)
        assert err.cid == str(cid)
        assert str(cid) in str(err)
        assert set(err.failures) == {"node-a", "node-c"}
        assert "connection refused" in str(err)

    def test_r_above_the_node_count_refuses_every_put(self, nodes: list[Replica]) -> None:
        store = ReplicatedBlobStore(nodes, r=4)
        with pytest.raises(ReplicationError, match="stored 3 of 4 copies"):
            store.put(b"four copies wanted")

    def test_read_only_replica_is_passed_over(self, nodes: list[Replica], tmp_path: Path) -> None:
        frozen = Replica("node-ro", LocalBlobStore(tmp_path / "ro", read_only=True))
        store = ReplicatedBlobStore([*nodes, frozen], r=3)
        cids = [store.put(f"ro {i}".encode()) for i in range(10)]
        for cid in cids:
            assert sum(_faulty(rep).has(cid) for rep in nodes) == 3
        assert any("node-ro" in store.placement(cid) for cid in cids)
        assert "ReadOnlyError" in store.suspects["node-ro"]

    def test_sequential_writes(self, nodes: list[Replica]) -> None:
        store = ReplicatedBlobStore(nodes, r=2, max_workers=1)
        _faulty(nodes[0]).down = True
        cid = store.put(b"one at a time")
        assert sum(_faulty(rep).has(cid) for rep in nodes[1:]) == 2
        _faulty(nodes[1]).down = True
        with pytest.raises(ReplicationError, match="stored 1 of 2"):
            store.put(b"not now")

    def test_read_only_store_writes_nothing(self, nodes: list[Replica]) -> None:
        store = ReplicatedBlobStore(nodes, r=2, read_only=True)
        with pytest.raises(ReadOnlyError):
            store.put(b"x")
        with pytest.raises(ReadOnlyError):
            store.repair()
        assert all(list(_faulty(rep).iter_cids()) == [] for rep in nodes)


class TestReads:
    def test_lying_node_is_suspect_and_the_good_copy_is_served(self, nodes: list[Replica]) -> None:
        store = ReplicatedBlobStore(nodes, r=2)
        data = b"the truth" * 100
        cid = store.put(data)
        first = store.placement(cid)[0]
        liar = _by_id(nodes)[first]
        liar.lying = True
        assert store.get(cid) == data
        assert "corrupt" in store.suspects[first]
        # Read repair re-wrote the liar's copy (on disk it was intact: it lies in flight).
        assert liar.path_of(cid).read_bytes() == data

    def test_damaged_copy_is_repaired_on_read(self, nodes: list[Replica]) -> None:
        store = ReplicatedBlobStore(nodes, r=2)
        data = b"repair me" * 1000
        cid = store.put(data)
        first = store.placement(cid)[0]
        damaged = _by_id(nodes)[first]
        _damage_file(damaged, cid, _flip(data))
        with pytest.raises(CorruptBlobError):
            damaged.get(cid)
        assert store.get(cid) == data
        assert first in store.suspects
        assert damaged.get(cid) == data  # read repair put the good bytes back
        store.flush()

    def test_missing_home_copy_is_restored_on_read(self, nodes: list[Replica]) -> None:
        store = ReplicatedBlobStore(nodes, r=2)
        cid = store.put(b"lost one copy")
        home = _by_id(nodes)[store.placement(cid)[0]]
        home.delete(cid)
        assert store.get(cid) == b"lost one copy"
        assert home.get(cid) == b"lost one copy"
        assert store.placement(cid)[0] not in store.suspects  # missing is not suspicious

    def test_stopped_node_fails_over_and_is_backed_off(self, nodes: list[Replica]) -> None:
        store = ReplicatedBlobStore(nodes, r=2, backoff=60)
        blobs = {store.put(f"failover {i}".encode()): f"failover {i}".encode() for i in range(30)}
        dead = _by_id(nodes)["node-a"]
        dead.down = True
        for cid, data in blobs.items():
            assert store.get(cid) == data
            assert store.has(cid)
            assert store.stat(cid).size == len(data)
        assert "unavailable" in store.suspects["node-a"]
        calls = dead.calls
        for cid, data in blobs.items():
            assert store.get(cid) == data
        assert dead.calls == calls, "a backed-off node is not asked while others answer"

        dead.down = False
        store.clear_suspects("node-a")
        assert "node-a" not in store.suspects
        for cid in blobs:
            store.get(cid)
        assert dead.calls > calls

    def test_without_backoff_a_dead_node_is_asked_again(self, nodes: list[Replica]) -> None:
        store = ReplicatedBlobStore(nodes, r=2, backoff=0)
        cids = [store.put(b"x%d" % i) for i in range(20)]
        cid = next(c for c in cids if store.placement(c)[0] == "node-a")
        dead = _by_id(nodes)["node-a"]
        dead.down = True
        assert store.get(cid) == b"x%d" % cids.index(cid)
        calls = dead.calls
        store.get(cid)
        assert dead.calls == calls + 1

    def test_not_found_needs_enough_answers(self, nodes: list[Replica]) -> None:
        store = ReplicatedBlobStore(nodes, r=2)
        missing = compute_cid(b"never stored")
        by_id = _by_id(nodes)
        by_id["node-a"].down = True  # 1 silent < r: the other two answered for every blob
        with pytest.raises(BlobNotFoundError, match="1 unreachable"):
            store.get(missing)
        assert not store.has(missing)
        by_id["node-b"].down = True  # 2 silent: a blob could be on exactly those two
        with pytest.raises(ReplicationError) as excinfo:
            store.get(missing)
        assert not isinstance(excinfo.value, FileNotFoundError)
        assert str(missing) in str(excinfo.value)
        said = excinfo.value.failures
        assert said["node-c"] == "not found"
        assert said["node-a"].startswith("unavailable")
        assert said["node-b"].startswith("unavailable")
        with pytest.raises(ReplicationError):
            store.has(missing)
        with pytest.raises(ReplicationError):
            store.stat(missing)

    def test_all_dead_names_what_each_node_said(self, nodes: list[Replica]) -> None:
        store = ReplicatedBlobStore(nodes, r=2)
        cid = store.put(b"unreachable")
        for rep in nodes:
            _faulty(rep).down = True
        with pytest.raises(ReplicationError, match=str(cid)) as excinfo:
            store.get(cid)
        message = str(excinfo.value)
        for rep in nodes:
            assert f"{rep.node_id}: unavailable" in message

    def test_corrupt_and_silent_is_not_reported_as_missing(self, nodes: list[Replica]) -> None:
        store = ReplicatedBlobStore(nodes, r=2)
        data = b"one bad, one gone"
        cid = store.put(data)
        first, second = store.placement(cid)
        by_id = _by_id(nodes)
        _damage_file(by_id[first], cid, _flip(data))
        by_id[second].down = True
        with pytest.raises(ReplicationError, match="corrupt copy"):
            store.get(cid)
        assert "corrupt" in store.suspects[first]

    def test_read_only_store_does_not_repair(self, nodes: list[Replica]) -> None:
        writer = ReplicatedBlobStore(nodes, r=2)
        cid = writer.put(b"read only")
        home = _by_id(nodes)[writer.placement(cid)[0]]
        home.delete(cid)
        reader = ReplicatedBlobStore(nodes, r=2, read_only=True)
        assert reader.get(cid) == b"read only"
        assert not home.has(cid)

    def test_stat_reports_the_latest_copy(self, nodes: list[Replica]) -> None:
        store = ReplicatedBlobStore(nodes, r=2)
        cid = store.put(b"timed twice")
        by_id = _by_id(nodes)
        times = [by_id[node].stat(cid).mtime for node in store.placement(cid)]
        assert store.stat(cid).mtime == max(times)

    def test_listing_skips_a_dead_node_and_deduplicates(self, nodes: list[Replica]) -> None:
        store = ReplicatedBlobStore(nodes, r=2)
        cids = {store.put(f"listed {i}".encode()) for i in range(20)}
        assert sorted(store.iter_cids(), key=str) == sorted(cids, key=str)
        _faulty(nodes[0]).down = True
        assert set(store.iter_cids()) == cids  # every blob has a copy on a live node
        _faulty(nodes[1]).down = True
        with pytest.raises(ReplicationError, match="could not list 2 of 3"):
            list(store.iter_cids())

    def test_delete_reaches_every_replica(self, nodes: list[Replica]) -> None:
        store = ReplicatedBlobStore(nodes, r=2)
        cid = store.put(b"everywhere")
        for rep in nodes:  # a stray extra copy, as a failed-over put would leave
            _faulty(rep).put(b"everywhere")
        _faulty(nodes[2]).down = True
        with pytest.raises(ReplicationError, match="deleted on 2 of 3"):
            store.delete(cid)
        _faulty(nodes[2]).down = False
        assert store.delete(cid) is True
        assert not any(_faulty(rep).has(cid) for rep in nodes)

    def test_pickles(self, tmp_path: Path) -> None:
        reps = [Replica(n, LocalBlobStore(tmp_path / n)) for n in "xyz"]
        store = ReplicatedBlobStore(reps, r=3, backoff=1.5)
        cid = store.put(b"pickled")
        copy = pickle.loads(pickle.dumps(store))
        assert isinstance(copy, ReplicatedBlobStore)
        assert copy.r == 3
        assert copy.get(cid) == b"pickled"


class TestRepair:
    def _lose_node_c(
        self, nodes: list[Replica], tmp_path: Path
    ) -> tuple[list[Replica], dict[CID, bytes]]:
        """Fill a/b/c, then replace c with a fresh, empty node d."""
        before = ReplicatedBlobStore(nodes, r=2)
        blobs = {before.put(b"repair %d" % i): b"repair %d" % i for i in range(60)}
        survivors = [rep for rep in nodes if rep.node_id != "node-c"]
        return [*survivors, Replica("node-d", _FaultyStore(tmp_path / "d"))], blobs

    def test_repair_after_losing_a_node(self, nodes: list[Replica], tmp_path: Path) -> None:
        replicas, blobs = self._lose_node_c(nodes, tmp_path)
        by_id = _by_id(replicas)
        store = ReplicatedBlobStore(replicas, r=2)
        # One CID loses its last good copy (c held the other); one has a damaged copy left.
        lost = next(c for c in blobs if set(ReplicatedBlobStore(nodes).placement(c)) >= {"node-c"})
        lone = next(n for n in ReplicatedBlobStore(nodes).placement(lost) if n != "node-c")
        _damage_file(by_id[lone], lost, _flip(blobs[lost]))
        damaged = next(
            c for c in blobs if set(ReplicatedBlobStore(nodes).placement(c)) == {"node-a", "node-b"}
        )
        _damage_file(by_id["node-a"], damaged, b"")

        seen: list[tuple[int, int]] = []
        report = store.repair(progress=lambda done, total: seen.append((done, total)))

        assert isinstance(report, RepairReport)
        assert report.checked == len(blobs)
        assert seen[-1] == (len(blobs), len(blobs))
        assert report.missing == (lost,)
        assert report.under_replicated == ()
        assert report.unreachable == ()
        assert not report.ok
        assert report.copied == sum(c.copied for c in report.per_node.values())
        assert report.per_node["node-a"].corrupt + report.per_node["node-b"].corrupt == 2
        assert report.per_node["node-d"].copied > 0
        for cid, data in blobs.items():
            if cid == lost:
                continue
            for node in store.placement(cid):
                assert by_id[node].get(cid) == data, (cid, node)
        # The lost CID was never "repaired" from bad bytes.
        assert not any(_holds_good_copy(s, lost) for s in by_id.values())
        assert not by_id["node-d"].has(lost)
        assert by_id["node-a"].get(damaged) == blobs[damaged]

        again = store.repair()
        assert again.copied == 0
        assert again.missing == (lost,)

    def test_repair_with_a_dead_node_uses_the_next_one(
        self, nodes: list[Replica], tmp_path: Path
    ) -> None:
        replicas, blobs = self._lose_node_c(nodes, tmp_path)
        store = ReplicatedBlobStore(replicas, r=2)
        _faulty(replicas[2]).down = True  # the fresh node d is unreachable too
        report = store.repair()
        assert report.unreachable == ("node-d",)
        assert report.missing == ()
        assert report.under_replicated == ()  # a and b both hold everything now
        for cid, data in blobs.items():
            assert _faulty(replicas[0]).get(cid) == data
            assert _faulty(replicas[1]).get(cid) == data

    def test_repair_reports_under_replication(self, nodes: list[Replica]) -> None:
        store = ReplicatedBlobStore(nodes, r=2)
        cids = [store.put(b"short %d" % i) for i in range(10)]
        _faulty(nodes[0]).down = _faulty(nodes[1]).down = True
        report = store.repair()
        assert report.unreachable == ("node-a", "node-b")
        assert report.missing == ()
        # Every CID that now lives on c alone is one copy short.
        assert set(report.under_replicated) == {c for c in cids if _faulty(nodes[2]).has(c)}
        assert not report.ok

    def test_put_during_an_outage_is_moved_home_by_repair(self, nodes: list[Replica]) -> None:
        store = ReplicatedBlobStore(nodes, r=2)
        by_id = _by_id(nodes)
        by_id["node-a"].down = True
        cids = [store.put(b"outage %d" % i) for i in range(20)]
        by_id["node-a"].down = False
        store.clear_suspects()
        report = store.repair()
        assert report.ok
        for cid in cids:
            for node in store.placement(cid):
                assert _holds_good_copy(by_id[node], cid)
