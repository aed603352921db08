"""Registry benchmarks with 100,000 published versions, on SQLite and on PostgreSQL:

- append throughput (entries/s, every signature and rule checked): one entry per durable
  transaction (``Registry.append``), and in batches of 1000 (``Registry.append_many``, used to
  build the 100k log);
- resolve latency p50/p99: over HTTP (``cidflow registry serve`` on 127.0.0.1, httpx client,
  keep-alive) and as a ratio to the same lookup done directly in SQL (one SELECT by primary key);
- ``registry verify`` speed (entries/s: signatures, chain, rules by a full re-fold, tables).

PostgreSQL runs in a throwaway cluster (initdb into bench/out, as the ``postgres`` user when
run as root), started and stopped by this script.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import BIN, OUT, fresh_dir, log, write_result

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from artifacts.cid import compute_cid  # noqa: E402
from registry.entries import Signed, make_body  # noqa: E402
from registry.identity import Identity  # noqa: E402
from registry.registry import Registry  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def entries(n: int, publishers: int = 100, per_asset: int = 10) -> list[Signed]:
    keys = [Identity.generate() for _ in range(publishers)]
    out = []
    for i in range(n):
        asset, version = divmod(i, per_asset)
        who = keys[asset % publishers]
        cid = str(compute_cid(f"artifact {i}".encode(), codec="json"))
        body = make_body(
            "publish", who, asset=f"ns{asset % publishers}/asset{asset}",
            version=f"1.{version}.0", cid=cid, kind="arrays", license="MIT",
            price={"amount": "0", "currency": "USD"}, description=f"dataset number {asset}",
            tags=["bench"], size=1000 + i, receipt=None,
        )  # fmt: skip
        out.append(Signed.sign(body, who))
    return out


class Postgres:
    """A throwaway PostgreSQL cluster under bench/out."""

    def __init__(self) -> None:
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
        if not bins:
            raise RuntimeError("PostgreSQL not installed: apt-get install postgresql")
        self.bin = bins[-1]
        self.dir = fresh_dir("pg")
        self.port = free_port()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.dir, "postgres")
        data = self.dir / "data"
        self._run("initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir}"
        self._run("pg_ctl", "-D", str(data), "-o", opts, "-l", str(self.dir / "log"), "-w", "start")
        self.data = data

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self.as_user, str(self.bin / tool), *args], check=True,
                       capture_output=True)  # fmt: skip

    def url(self, db: str) -> str:
        subprocess.run([*self.as_user, str(self.bin / "createdb"), "-h", "127.0.0.1", "-p",
                        str(self.port), "-U", "postgres", db], check=True)  # fmt: skip
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


def direct_sql_latency(reg: Registry, refs: list[tuple[str, str]]) -> list[float]:
    import sqlalchemy as sa

    from registry.sql import versions

    times = []
    with reg.engine.connect() as conn:
        q = sa.select(versions.c.cid).where(
            versions.c.asset == sa.bindparam("a"), versions.c.version == sa.bindparam("v")
        )
        for asset, version in refs:
            t = time.perf_counter()
            conn.execute(q, {"a": asset, "v": version}).scalar_one()
            times.append(time.perf_counter() - t)
    return times


def http_latency(url: str, home: Path, refs: list[tuple[str, str]]) -> list[float]:
    import httpx

    port = free_port()
    server = subprocess.Popen(
        [str(BIN / "cidflow"), "--home", str(home), "registry", "serve", "--db", url,
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=10) as client:
            for _ in range(200):
                try:
                    if client.get("/v1/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            times = []
            for asset, version in refs:
                t = time.perf_counter()
                r = client.get("/v1/resolve", params={"ref": f"{asset}@{version}"})
                times.append(time.perf_counter() - t)
                r.raise_for_status()
        return times
    finally:
        server.terminate()
        server.wait(10)


def bench_backend(name: str, url: str, signed: list[Signed], lookups: int) -> dict[str, object]:
    home = fresh_dir(f"registry-{name}-home")
    reg = Registry(url, Identity.load_or_create(home, "registry"))
    bulk = signed[:-500]
    t = time.perf_counter()
    for i in range(0, len(bulk), 1000):
        reg.append_many(bulk[i : i + 1000])
    batch_s = time.perf_counter() - t
    t = time.perf_counter()
    for entry in signed[-500:]:
        reg.append(entry)
    single_s = time.perf_counter() - t
    log(f"  {name}: {len(bulk)} batched in {batch_s:.1f}s, 500 single in {single_s:.1f}s")
    rng = random.Random(0)
    refs = []
    for _ in range(lookups):
        b = rng.choice(signed).body
        refs.append((b["asset"], b["version"]))
    sql = direct_sql_latency(reg, refs)
    http = http_latency(url, home, refs)
    t = time.perf_counter()
    head = reg.verify()
    verify_s = time.perf_counter() - t
    reg.close()
    result = {
        "entries": head.seq,
        "append_batched_per_s": len(bulk) / batch_s,
        "append_single_per_s": 500 / single_s,
        "resolve_http_ms": {"p50": pct(http, 0.5) * 1e3, "p99": pct(http, 0.99) * 1e3},
        "resolve_sql_ms": {"p50": pct(sql, 0.5) * 1e3, "p99": pct(sql, 0.99) * 1e3},
        "http_over_sql_p50": statistics.median(http) / statistics.median(sql),
        "verify_entries_per_s": head.seq / verify_s,
        "verify_seconds": verify_s,
    }
    log(f"  {name}: {result}")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--versions", type=int, default=100_000)
    p.add_argument("--lookups", type=int, default=2000)
    p.add_argument("--backends", default="sqlite,postgresql")
    args = p.parse_args()
    t = time.perf_counter()
    signed = entries(args.versions)
    log(f"  signed {len(signed)} entries in {time.perf_counter() - t:.1f}s")
    results: dict[str, object] = {}
    for backend in args.backends.split(","):
        if backend == "sqlite":
            url = f"sqlite:///{fresh_dir('registry-sqlite') / 'r.db'}"
            results["sqlite"] = bench_backend("sqlite", url, signed, args.lookups)
        else:
            pg = Postgres()
            try:
                results["postgresql"] = bench_backend(
                    "postgresql", pg.url("bench"), signed, args.lookups
                )
            finally:
                pg.stop()
    write_result("bench_registry", {"versions": args.versions, "results": results})
    for name, r in results.items():
        assert isinstance(r, dict)
        print(
            f"bench_registry {name}: append {r['append_single_per_s']:.0f}/s single, "
            f"{r['append_batched_per_s']:.0f}/s batched; resolve http p50 "
            f"{r['resolve_http_ms']['p50']:.2f} ms p99 {r['resolve_http_ms']['p99']:.2f} ms "
            f"(x{r['http_over_sql_p50']:.0f} of SQL p50 {r['resolve_sql_ms']['p50']:.3f} ms); "
            f"verify {r['verify_entries_per_s']:.0f} entries/s"
        )


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    main()
