"""Federated learning in simulation (issue 6): accuracy per round of every strategy.

Digits (scikit-learn, 80/20 split by `publish`), 5 clients, Dirichlet α = 0.5, MLP, 1 local
epoch per round, seed 0: `cidflow federated --json` per strategy in one fresh home (the split
and round-0 model are shared through the cache). Also: the same FedAvg run on the pooled data
as one client (centralised reference) and rounds-to-0.90 for each.

With ``--byzantine``: the same runs with client 0 of 5 Byzantine (``scale:1000``, then
``signflip``) for FedAvg, FedMedian, FedTrimmedAvg (β = 0.2) and Krum (f = 1), against each
strategy's clean run. Differential privacy is not measured yet (not built).
"""

from __future__ import annotations

import argparse
import json

from _common import BIN, env_with, fresh_dir, log, run, write_result

STRATEGIES = ["fedavg", "fedprox", "fedadagrad", "fedadam", "fedyogi", "fedmedian",
              "fedtrimmedavg", "krum", "multikrum"]  # fmt: skip
EXTRA = {
    "krum": ["--strategy-arg", "num_malicious=1"],
    "multikrum": ["--strategy-arg", "num_malicious=1", "--strategy-arg", "to_keep=3"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--strategies", nargs="*", default=STRATEGIES)
    p.add_argument("--byzantine", action="store_true", help="Also the Byzantine runs.")
    args = p.parse_args()
    work = fresh_dir("federated")
    home = work / "home"
    cf = [str(BIN / "cidflow"), "--home", str(home)]
    run([*cf, "key", "new"], env=env_with())
    run([*cf, "publish", "sklearn:digits", "--name", "demo/digits", "--version", "1.0.0"],
        env=env_with())  # fmt: skip
    curves = {}
    for name in ["central", *args.strategies]:
        clients = ["--clients", "1", "--partition", "iid"] if name == "central" else [
            "--clients", "5", "--partition", "dirichlet:0.5"]  # fmt: skip
        strategy = "fedavg" if name == "central" else name
        r = run([*cf, "federated", "--dataset", "demo/digits", *clients, "--rounds",
                 str(args.rounds), "--strategy", strategy, *EXTRA.get(name, []), "--model", "mlp",
                 "--seed", "0", "--json"], env=env_with(), check=False)  # fmt: skip
        if r["rc"] != 0:
            curves[name] = {"error": r["stderr"].strip().splitlines()[-1:], "seconds": r["seconds"]}
            log(f"  {name}: failed {curves[name]['error']}")
            continue
        out = json.loads(r["stdout"].strip().splitlines()[-1])
        acc = [h["accuracy"] for h in out["history"]]
        reach = next((h["round"] for h in out["history"] if h["accuracy"] >= 0.90), None)
        curves[name] = {"accuracy": acc, "final": out["accuracy"], "rounds_to_090": reach,
                        "seconds": r["seconds"]}  # fmt: skip
        log(f"  {name}: final {out['accuracy']:.3f}, 0.90 at round {reach}, {r['seconds']:.1f}s")
    if args.byzantine:
        for name in ["fedavg", "fedmedian", "fedtrimmedavg", "krum"]:
            for attack in ["scale:1000", "signflip"]:
                r = run([*cf, "federated", "--dataset", "demo/digits", "--clients", "5",
                         "--partition", "dirichlet:0.5", "--rounds", str(args.rounds),
                         "--strategy", name, *EXTRA.get(name, []), "--model", "mlp", "--seed",
                         "0", "--byzantine", "1", "--attack", attack, "--json"],
                        env=env_with(), check=False)  # fmt: skip
                key = f"{name}+byzantine({attack})"
                if r["rc"] != 0:
                    curves[key] = {"error": r["stderr"].strip().splitlines()[-1:]}
                    log(f"  {key}: failed {curves[key]['error']}")
                    continue
                out = json.loads(r["stdout"].strip().splitlines()[-1])
                clean = curves.get(name, {}).get("final")
                curves[key] = {"accuracy": [h["accuracy"] for h in out["history"]],
                               "final": out["accuracy"], "clean_final": clean,
                               "drop_points": None if clean is None else
                               round(100 * (clean - out["accuracy"]), 1),
                               "seconds": r["seconds"]}  # fmt: skip
                log(f"  {key}: final {out['accuracy']:.3f} (clean {clean})")
    write_result("bench_federated", {"rounds": args.rounds, "curves": curves})
    print("bench_federated: " + ", ".join(
        f"{k} {v.get('final', float('nan')):.3f}" for k, v in curves.items()))  # fmt: skip


if __name__ == "__main__":
    main()
