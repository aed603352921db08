"""Federated learning in simulation (issue 6): accuracy per round of every strategy.

Digits (scikit-learn, 80/20 split by `publish`), 5 clients, Dirichlet α = 0.5, MLP, 1 local
epoch per round, seed 0: `cidflow federated --json` per strategy in one fresh home (the split
and round-0 model are shared through the cache). Also: the same FedAvg run on the pooled data
as one client (centralised reference) and rounds-to-0.90 for each.

``--byzantine``: every strategy again with client 0 of 5 Byzantine, once sending ``signflip``
and once ``scale:1000``, against its clean run (one seed; `bench_fed_robust.py` takes several).

``--dp``: every strategy with example-level DP at ε = 8 (δ = 1e-5; DP-SGD on each client,
per-example clip 1, Adam lr 0.02, 2 local epochs, the noise chosen by each client for its own
data size), the same without DP at that lr and epochs (reference), and FedAvg with client-level
DP at ε = 8 (noise on the sum of 5 clipped updates).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from _common import BIN, env_with, fresh_dir, log, run, write_result

STRATEGIES = ["fedavg", "fedprox", "fedadagrad", "fedadam", "fedyogi", "fedmedian",
              "fedtrimmedavg", "krum", "multikrum"]  # fmt: skip
EXTRA = {
    "krum": ["--strategy-arg", "num_malicious=1"],
    "multikrum": ["--strategy-arg", "num_malicious=1", "--strategy-arg", "to_keep=3"],
}
DP_TRAINING = ["--lr", "0.02", "--epochs", "2"]
DP_EXAMPLE = ["--dp-epsilon", "8", "--dp-level", "example", *DP_TRAINING]


def federated(home: Path, name: str, rounds: int, extra: list[str]) -> dict[str, Any]:
    """One `cidflow federated --json` run of strategy ``name`` (``central``: one IID client)."""
    clients = ["--clients", "1", "--partition", "iid"] if name == "central" else [
        "--clients", "5", "--partition", "dirichlet:0.5"]  # fmt: skip
    strategy = "fedavg" if name == "central" else name
    r = run([str(BIN / "cidflow"), "--home", str(home), "federated", "--dataset", "demo/digits",
             *clients, "--rounds", str(rounds), "--strategy", strategy, *EXTRA.get(name, []),
             "--model", "mlp", "--seed", "0", *extra, "--json"], env=env_with(),
            check=False)  # fmt: skip
    if r["rc"] != 0:
        return {"error": r["stderr"].strip().splitlines()[-1:], "seconds": r["seconds"]}
    out = json.loads(r["stdout"].strip().splitlines()[-1])
    reach = next((h["round"] for h in out["history"] if h["accuracy"] >= 0.90), None)
    privacy = out.get("privacy") or {}
    return {"accuracy": [h["accuracy"] for h in out["history"]], "final": out["accuracy"],
            "rounds_to_090": reach, "seconds": r["seconds"],
            "epsilon": privacy.get("epsilon")}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--strategies", nargs="*", default=STRATEGIES)
    p.add_argument("--clean", action=argparse.BooleanOptionalAction, default=True,
                   help="The clean runs (with the centralised reference).")  # fmt: skip
    p.add_argument("--byzantine", action="store_true", help="Also the Byzantine runs.")
    p.add_argument("--dp", action="store_true", help="Also the runs with DP at epsilon 8.")
    args = p.parse_args()
    home = fresh_dir("federated") / "home"
    cf = [str(BIN / "cidflow"), "--home", str(home)]
    run([*cf, "key", "new"], env=env_with())
    run([*cf, "publish", "sklearn:digits", "--name", "demo/digits", "--version", "1.0.0"],
        env=env_with())  # fmt: skip
    plan: list[tuple[str, str, list[str]]] = []
    if args.clean:
        plan += [(name, name, []) for name in ["central", *args.strategies]]
    if args.byzantine:
        plan += [(f"{name}+byzantine({attack})", name, ["--byzantine", "1", "--attack", attack])
                 for name in args.strategies for attack in ("signflip", "scale:1000")]  # fmt: skip
    if args.dp:
        plan += [("fedavg (lr 0.02, 2 epochs, no DP)", "fedavg", DP_TRAINING),
                 ("fedavg+dp(client, eps 8)", "fedavg", ["--dp-epsilon", "8"])]  # fmt: skip
        plan += [(f"{name}+dp(example, eps 8)", name, DP_EXAMPLE) for name in args.strategies]
    curves: dict[str, dict[str, Any]] = {}
    for key, name, extra in plan:
        curves[key] = got = federated(home, name, args.rounds, extra)
        if "error" in got:
            log(f"  {key}: failed {got['error']}")
            continue
        clean = curves.get(name, {}).get("final")
        if clean is not None and key != name:
            got["clean_final"], got["drop_points"] = clean, round(100 * (clean - got["final"]), 1)
        log(
            f"  {key}: final {got['final']:.3f}, 0.90 at round {got['rounds_to_090']}, "
            f"{got['seconds']:.1f}s" + (f" (clean {clean:.3f})" if key != name and clean else "")
        )
    write_result("bench_federated", {"rounds": args.rounds, "curves": curves})
    print("bench_federated: " + ", ".join(
        f"{k} {v.get('final', float('nan')):.3f}" for k, v in curves.items()))  # fmt: skip


if __name__ == "__main__":
    main()
