"""Overhead of signed run requests (issue 13): what a coordinator pays to sign one and what a
node pays to check one before a flow runs (signature, allow-list, parameters, expiry, and the
nonce written to the node's SQLite file, fsync included), against a flow run's own cost.

Peer: the same node-side check without the nonce store (the signature and the comparisons
alone), and the measured time of the smallest node flow (``evaluate`` of the digits MLP,
bench/RESULTS.md section 9/10: hundreds of milliseconds), to put the figure in proportion.
Each figure is the median of ``--runs`` calls in this process (the check runs inside the flow's
own process, so a whole-process timing would only measure Python's start-up).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from _common import log, write_result

from flows.run_requests import NonceStore, sign_request, verify_request
from registry.identity import Identity

PARAMS = {
    "dataset": "private:secret",
    "model": "mlp",
    "epochs": 10,
    "seed": 0,
    "batch_size": 64,
    "lr": 0.001,
    "model_kwargs": {"hidden": [128]},
    "note": "chose",
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=2000)
    args = p.parse_args()
    coordinator, node = Identity.generate(), Identity.generate()
    allowed = {coordinator.public_key}
    sign_s, check_s, bare_s = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        nonces = NonceStore.for_home(Path(tmp))
        for _ in range(args.runs):
            t0 = time.perf_counter()
            request = sign_request(coordinator, flow="train", node_id=node.id, parameters=PARAMS)
            t1 = time.perf_counter()
            verify_request(
                request,
                flow="train",
                node_id=node.id,
                parameters={**PARAMS, "request": request},
                allowed=allowed,
                nonces=nonces,
            )
            t2 = time.perf_counter()
            sign_s.append(t1 - t0)
            check_s.append(t2 - t1)

        class NoNonces(NonceStore):
            def use(self, nonce: str, expires: float, *, now: float | None = None) -> bool:
                return True

        bare = NoNonces(Path(tmp) / "unused.db")
        for _ in range(args.runs):
            request = sign_request(coordinator, flow="train", node_id=node.id, parameters=PARAMS)
            t0 = time.perf_counter()
            verify_request(
                request,
                flow="train",
                node_id=node.id,
                parameters={**PARAMS, "request": request},
                allowed=allowed,
                nonces=bare,
            )
            bare_s.append(time.perf_counter() - t0)
    med = {
        k: statistics.median(v) * 1000
        for k, v in (("sign", sign_s), ("check", check_s), ("check_without_nonce", bare_s))
    }
    log("  " + "  ".join(f"{k} {v:.3f} ms" for k, v in med.items()))
    write_result(
        "bench_run_request",
        {
            "what": "sign a run request (coordinator); check it on the node (signature, "
            "allow-list, parameters, expiry, nonce in SQLite)",
            "runs": args.runs,
            "median_ms": med,
            "p99_ms": {
                k: sorted(v)[int(0.99 * len(v))] * 1000
                for k, v in (("sign", sign_s), ("check", check_s), ("check_without_nonce", bare_s))
            },
        },
    )


if __name__ == "__main__":
    main()
