"""Robust aggregation under one Byzantine client in five, over several seeds (issue 6, part 3).

Digits, 5 clients, Dirichlet α = 0.5, MLP, 20 rounds, as `bench_federated.py`; for each strategy
and seed: a clean run, then client 0 sending `signflip` and `scale:1000`. The partition changes
with the seed, so each seed is a different Byzantine client's data. Judged on the mean accuracy
of the last 5 rounds (single rounds of Krum swing by 10+ points on non-IID data) and on the
final round, averaged over seeds. ``--min-cosine C`` screens every run's updates by direction,
``--max-norm-ratio R`` by length against the round's median, ``--exclude-after K`` drops a client
for good once K of its updates were rejected.
``--attacks ... silent`` adds runs where client 0 sends nothing: what a perfect defence (one that
drops the attacker every round) reaches, the floor for the other attacks' drops. ``--tag`` names
the output file (bench/out/bench_fed_robust[-TAG].json) so runs can go side by side.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable

from _common import BIN, env_with, fresh_dir, log, run, write_result

STRATEGIES = {
    "fedavg": [],
    "fedmedian": [],
    "fedtrimmedavg": [],
    "krum": ["--strategy-arg", "num_malicious=1"],
    "multikrum": ["--strategy-arg", "num_malicious=1", "--strategy-arg", "to_keep=4"],
}
ATTACKS = ["clean", "signflip", "scale:1000"]


def last_mean(curve: list[float]) -> float:
    return statistics.mean(curve[-5:])


def last(curve: list[float]) -> float:
    return curve[-1]


def points(
    f: Callable[[list[float]], float], clean: list[list[float]], runs: list[list[float]]
) -> list[float]:
    """Per seed, how many points ``runs`` lose against the clean run by ``f`` (last-5 / final)."""
    return [round(100 * (f(c) - f(x)), 1) for c, x in zip(clean, runs, strict=True)]


def report(
    args: argparse.Namespace,
    seeds: range,
    suffix: str,
    runs: dict[str, dict[str, list[list[float]]]],
    rejected: dict[str, dict[str, list[int]]],
) -> None:
    """Summarise the runs so far (drops against each strategy's clean runs) and write them."""
    summary = {}
    for name, by_attack in runs.items():
        last5 = {a: statistics.mean(statistics.mean(c[-5:]) for c in cs)
                 for a, cs in by_attack.items()}  # fmt: skip
        final = {a: statistics.mean(c[-1] for c in cs) for a, cs in by_attack.items()}
        drops = {a: round(100 * (last5["clean"] - v), 1) for a, v in last5.items() if a != "clean"}
        clean = by_attack["clean"]
        per_seed = {
            a: {"last5": points(last_mean, clean, cs),
                "final": points(last, clean, cs)}
            for a, cs in by_attack.items() if a != "clean"
        }  # fmt: skip
        summary[name] = {"last5": last5, "final": final, "drop_points_last5": drops,
                         "drop_points_per_seed": per_seed, "rejected": rejected[name]}  # fmt: skip
    write_result("bench_fed_robust" + suffix, {"rounds": args.rounds, "seeds": list(seeds),
                                               "min_cosine": args.min_cosine,
                                               "max_norm_ratio": args.max_norm_ratio,
                                               "exclude_after": args.exclude_after, "runs": runs,
                                               "summary": summary})  # fmt: skip
    print(
        "bench_fed_robust: " + json.dumps({k: v["drop_points_last5"] for k, v in summary.items()})
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--max-norm-ratio", type=float, default=None,
                   help="Also reject updates longer than R x the round's median.")  # fmt: skip
    p.add_argument("--exclude-after", type=int, default=None,
                   help="Also drop a client once K of its updates were rejected.")  # fmt: skip
    p.add_argument("--attacks", nargs="*", default=ATTACKS[1:],
                   help="Besides the clean run: signflip, scale:K, silent.")  # fmt: skip
    p.add_argument("--tag", default="")
    p.add_argument("--strategies", nargs="*", default=[s for s in STRATEGIES if s != "fedavg"])
    p.add_argument(
        "--min-cosine",
        type=float,
        default=None,
        help="Also screen updates by direction (cidflow federated --min-cosine).",
    )
    args = p.parse_args()
    screen = [] if args.min_cosine is None else ["--min-cosine", str(args.min_cosine)]
    if args.max_norm_ratio is not None:
        screen += ["--max-norm-ratio", str(args.max_norm_ratio)]
    if args.exclude_after is not None:
        screen += ["--exclude-after", str(args.exclude_after)]
    suffix = f"-{args.tag}" if args.tag else ""
    home = fresh_dir("fed-robust" + suffix) / "home"
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    cf = [str(BIN / "cidflow"), "--home", str(home)]
    run([*cf, "key", "new"], env=env_with())
    run([*cf, "publish", "sklearn:digits", "--name", "demo/digits", "--version", "1.0.0"],
        env=env_with())  # fmt: skip
    runs: dict[str, dict[str, list[list[float]]]] = {}
    rejected: dict[str, dict[str, list[int]]] = {}  # updates rejected over a run, per seed
    for name in args.strategies:
        for seed in seeds:
            for attack in ["clean", *args.attacks]:
                if attack == "silent" and name in ("krum", "multikrum"):
                    continue  # f = 1 needs n > 4 updates: 4 honest ones fail the round, by design
                byz = [] if attack == "clean" else ["--byzantine", "1", "--attack", attack]
                r = run([*cf, "federated", "--dataset", "demo/digits", "--clients", "5",
                         "--partition", "dirichlet:0.5", "--rounds", str(args.rounds),
                         "--strategy", name, *STRATEGIES[name], "--model", "mlp", "--seed",
                         str(seed), *byz, *screen, "--json"], env=env_with())  # fmt: skip
                history = json.loads(r["stdout"].splitlines()[-1])["history"]
                acc = [h["accuracy"] for h in history]
                rejected.setdefault(name, {}).setdefault(attack, []).append(
                    sum(h["rejected"] for h in history)
                )
                runs.setdefault(name, {}).setdefault(attack, []).append(acc)
                log(f"  {name} seed {seed} {attack}: final {acc[-1]:.3f}")
        report(args, seeds, suffix, runs, rejected)  # after each strategy: a later failure
        # keeps what was measured


if __name__ == "__main__":
    main()
