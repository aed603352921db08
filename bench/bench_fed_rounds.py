"""Federated round overhead and time to 0.90 test accuracy (issue 6).

Digits (``publish sklearn:digits`` as ``demo/digits``, 80/20 split), MLP, FedAvg, 1 local epoch
per round (Adam, lr 5e-3, batch 32), partition Dirichlet α = 0.5, seed ``--seed``.

(a) Round overhead = a round's wall time minus the clients' training time in it.

- Simulation: ``cidflow federated --clients 5 ... --rounds R -v --json``, fresh home per run.
- Cluster: ``cidflow cluster up --nodes 3`` with one private part per node (the cut
  ``write_client_parts`` makes, 3 clients), then ``cidflow federated --client node-1
  --client node-2 --client node-3 --rounds R -v --json`` (a new seed per run, so no step is
  served from the cache); ``cluster down`` at the end, always.

Round wall time, two ways: (1) from the flow's log: the interval between consecutive
``round k/R`` lines (rounds 2..R; round 1 also carries the first-call costs and is reported on
its own), median; (2) whole processes: (T(R rounds) − T(1 round)) / (R − 1), per repeat, median.
Clients' training time: ``flows.federated.client.local_train`` timed in this process on the same
client parts with the same settings and per-client seeds, rounds chained by a FedAvg mean
(after one warm-up call): the sum over the 5 clients per round in simulation (they run one
after the other), the max over the 3 clients in the cluster (they run in parallel on their
nodes; on a 2-core machine they also compete for the cores, so that max is a lower bound).
Overhead per round = round wall time − training time; share = overhead / round wall time.

(b) Time to 0.90 test accuracy, whole processes from start to exit, fresh homes:
federated simulation (as above) with ``--rounds`` = the first round reaching ≥ 0.90 in the
R-round run, against centralised training on the pooled data: ``cidflow train --model mlp
--epochs E --lr 5e-3 --batch-size 32`` then ``cidflow evaluate`` (test split), with E the
smallest number of epochs reaching ≥ 0.90 (probed upwards from 1). Ratio = federated /
centralised (train + evaluate: two processes, each with its own start-up), and also against
``train`` alone. Also recorded: when the round-r line appeared in the R-round runs' logs.

Every timed process runs with inherited ``PREFECT_*``/``CIDFLOW_*`` variables removed and
Prefect's analytics off; each home is a copy of one where only ``key new`` and ``publish``
ran (no cache). Medians over ``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from _common import BIN, ROOT, fresh_dir, log, median, run, write_result

PARTITION = "dirichlet:0.5"
SIM_CLIENTS = 5
CLUSTER_NODES = 3
LR, BATCH, EPOCHS = 5e-3, 32, 1
TARGET = 0.90
STAMP = r"^(\d\d):(\d\d):(\d\d)\.(\d+) \|"
ROUND_LINE = re.compile(STAMP + r".*\bround (\d+)/(\d+)\s+accuracy=")
INIT_LINE = re.compile(STAMP + r".*Task run 'fed-init-.*Finished")
CIDFLOW = str(BIN / "cidflow")
PUBLISH = "publish sklearn:digits --name demo/digits --version 1.0.0 --json"


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "CIDFLOW_"))}
    env.update(PYTHONUNBUFFERED="1", DVC_NO_ANALYTICS="1", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    return env


ENV = clean_env()


def cli(home: Path, line: str, *extra: str) -> list[str]:
    """``cidflow --home HOME`` + the words of ``line`` + ``extra``."""
    return [CIDFLOW, "--home", str(home), *line.split(), *extra]


def timed(cmd: list[str]) -> dict[str, Any]:
    """One whole process (``_common.run``), plus its wall-clock start for the log offsets."""
    os.sync()
    start = time.time()
    r = run(cmd, env=ENV)
    r["start"] = start
    return r


def last_json(stdout: str) -> dict[str, Any]:
    return json.loads(stdout.strip().splitlines()[-1])


def round_log(stderr: str, start: float) -> dict[str, Any]:
    """Times of the flow's ``round k/R`` log lines (local time of day, as Prefect prints them):
    seconds after the process started, the intervals between consecutive rounds, and round 1's
    own time (from the ``fed-init`` step's end to its line: includes first-call costs)."""
    lt = time.localtime(start)
    start_sod = lt.tm_hour * 3600 + lt.tm_min * 60 + lt.tm_sec + (start % 1)

    def offset(m: re.Match[str]) -> float:
        h, mi, s, frac = m.group(1, 2, 3, 4)
        sod = int(h) * 3600 + int(mi) * 60 + int(s) + float("0." + frac)
        return (sod - start_sod) % 86400

    at: dict[int, float] = {}
    init = None
    for line in stderr.splitlines():
        if m := ROUND_LINE.match(line):
            at[int(m.group(5))] = offset(m)
        elif m := INIT_LINE.match(line):
            init = offset(m)
    rounds = sorted(at)
    return {
        "rounds": rounds,
        "since_start_s": [at[r] for r in rounds],
        "intervals_s": [at[r] - at[r - 1] for r in rounds if r - 1 in at],
        "init_done_s": init,
        "round1_s": at[1] - init if init is not None and 1 in at else None,
    }


def new_home(template: Path, dest: Path) -> Path:
    shutil.copytree(template, dest)
    return dest


# -- clients' training time, in this process ---------------------------------------------------


def client_parts(store: Any, dataset: str, clients: int, seed: int, out: Path) -> list[Path]:
    from flows.federated.flow import write_client_parts

    return [Path(p) for p in write_client_parts(store, dataset, clients, PARTITION, seed, out)]


def training_times(parts: list[Path], spec: Any, seed: int, rounds: int) -> list[list[float]]:
    """Seconds of ``local_train`` per round per client, rounds chained by a FedAvg mean, with
    the per-client seeds ``federated_train_fn`` uses (client k of the round's list)."""
    import numpy as np

    from flows.federated.client import local_train

    data = []
    for p in parts:
        with np.load(p) as z:
            data.append((z["train/x"].astype(np.float32), z["train/y"].astype(np.int64)))
    weights = spec.initial_weights()
    kw = {"epochs": EPOCHS, "lr": LR, "batch_size": BATCH}
    local_train(spec, weights, *data[0], seed=seed, **kw)  # warm-up (lazy imports, first ops)
    out = []
    for rnd in range(1, rounds + 1):
        secs, results = [], []
        for k, (x, y) in enumerate(data):
            t = time.perf_counter()
            res = local_train(spec, weights, x, y, seed=seed * 100_003 + rnd * 1_009 + k, **kw)
            secs.append(time.perf_counter() - t)
            results.append(res)
        total = sum(r.num_examples for r in results)
        weights = {
            name: (
                sum(r.weights[name].astype(np.float64) * r.num_examples for r in results) / total
            ).astype(w.dtype)
            if np.issubdtype(w.dtype, np.floating)
            else w
            for name, w in weights.items()
        }
        out.append(secs)
    return out


def model_spec(store: Any, dataset: str, seed: int) -> Any:
    import numpy as np

    from flows.federated.client import ModelSpec
    from flows.pipelines import _n_classes, _supervised

    art = store.open_artifact(dataset)
    x, y = _supervised(art, "train")
    return ModelSpec(
        "mlp", tuple(int(n) for n in x.shape[1:]), _n_classes(art, np.asarray(y[...])), seed
    )


def overhead(round_s: float | None, train_s: float) -> dict[str, Any]:
    if round_s is None:
        return {"round_s": None, "training_s": train_s, "overhead_s": None, "overhead_share": None}
    return {
        "round_s": round_s,
        "training_s": train_s,
        "overhead_s": round_s - train_s,
        "overhead_share": (round_s - train_s) / round_s if round_s > 0 else None,
    }


def summarise(runs: list[dict[str, Any]], rounds: int, combine: str) -> dict[str, Any]:
    """Medians over repeats of the log-based and the whole-process per-round times, and the
    overhead of each against the in-process training time (``combine``: sum or max)."""
    intervals = [i for r in runs for i in r["log_R"]["intervals_s"]]
    round_logs = median(intervals) if intervals else None
    first = [r["log_R"]["round1_s"] for r in runs if r["log_R"]["round1_s"] is not None]
    line1 = [r["log_R"]["since_start_s"][0] for r in runs if r["log_R"]["since_start_s"]]
    diff = median([(r["seconds_R"] - r["seconds_1"]) / (rounds - 1) for r in runs])
    train = median([t for r in runs for t in r["training_per_round_s"]])
    return {
        "from_logs": overhead(round_logs, train),
        "from_whole_processes": overhead(diff, train),
        "round1_s_from_logs": median(first) if first else None,
        "round1_line_after_start_s": median(line1) if line1 else None,
        "process_R_rounds_s": median([r["seconds_R"] for r in runs]),
        "process_1_round_s": median([r["seconds_1"] for r in runs]),
        "training_per_round": combine,
        "training_per_client_s": median([t for r in runs for rr in r["training_s"] for t in rr]),
    }


# -- parts --------------------------------------------------------------------------------------


def simulation(
    args: argparse.Namespace, template: Path, work: Path, spec: Any, parts5: list[Path]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(a) in simulation and (b); returns (overhead figures, time-to-0.90 figures)."""
    R = args.rounds
    fed = (
        f"federated --dataset demo/digits --clients {SIM_CLIENTS} --partition {PARTITION} "
        f"--strategy fedavg --model mlp --seed {args.seed} -v --json"
    )
    runs: list[dict[str, Any]] = []
    r90: int | None = None
    fed90: list[dict[str, Any]] = []
    line90: list[float] = []
    central: list[dict[str, Any]] = []
    probes: list[dict[str, Any]] = []
    epochs90: int | None = None
    n = 0

    def home() -> Path:
        nonlocal n
        n += 1
        return new_home(template, work / f"sim-{n}")

    def fed_run(rounds: int) -> dict[str, Any]:
        r = timed(cli(home(), fed, "--rounds", str(rounds)))
        out = last_json(r["stdout"])
        return {
            "seconds": r["seconds"],
            "history": [h["accuracy"] for h in out["history"]],
            "log": round_log(r["stderr"], r["start"]),
        }

    def central_run(epochs: int) -> dict[str, Any]:
        h = home()
        tr = timed(
            cli(
                h,
                "train --dataset demo/digits --model mlp",
                "--epochs",
                str(epochs),
                "--lr",
                str(LR),
                "--batch-size",
                str(BATCH),
                "--seed",
                str(args.seed),
                "--json",
            )
        )
        model = last_json(tr["stdout"])["model"]
        ev = timed(cli(h, "evaluate --dataset demo/digits --json --model", model))
        acc = float(last_json(ev["stdout"])["metrics"]["accuracy"])
        return {
            "epochs": epochs,
            "train_s": tr["seconds"],
            "evaluate_s": ev["seconds"],
            "seconds": tr["seconds"] + ev["seconds"],
            "accuracy": acc,
        }

    for i in range(args.repeats):
        a = fed_run(R)
        b = fed_run(1)
        train = training_times(parts5, spec, args.seed, R)
        runs.append(
            {
                "seconds_R": a["seconds"],
                "seconds_1": b["seconds"],
                "accuracy": a["history"],
                "log_R": a["log"],
                "log_1": b["log"],
                "training_s": train,
                "training_per_round_s": [sum(t) for t in train],
            }
        )
        log(
            f"  sim repeat {i}: {R} rounds {a['seconds']:.1f}s, 1 round {b['seconds']:.1f}s, "
            f"log round interval {median(a['log']['intervals_s']):.3f}s, training/round "
            f"{median(runs[-1]['training_per_round_s']):.3f}s"
        )
        if i == 0:
            r90 = next((k + 1 for k, acc in enumerate(a["history"]) if acc >= TARGET), None)
        if r90 is not None:
            if r90 == R:
                got = {"seconds": a["seconds"], "accuracy": a["history"][-1], "reused": f"{R}"}
            elif r90 == 1:
                got = {"seconds": b["seconds"], "accuracy": b["history"][-1], "reused": "1"}
            else:
                c = fed_run(r90)
                got = {"seconds": c["seconds"], "accuracy": c["history"][-1]}
            fed90.append(got)
            if len(a["log"]["since_start_s"]) >= r90:
                line90.append(a["log"]["since_start_s"][r90 - 1])
            log(f"    federated to {TARGET}: {r90} rounds, {got['seconds']:.1f}s")
        if epochs90 is None:
            for e in range(1, args.max_epochs + 1):
                c = central_run(e)
                log(
                    f"    central {e} epoch(s): acc {c['accuracy']:.3f}, {c['seconds']:.1f}s "
                    f"(train {c['train_s']:.1f} + evaluate {c['evaluate_s']:.1f})"
                )
                if c["accuracy"] >= TARGET:
                    epochs90 = e
                    central.append(c)
                    break
                probes.append(c)
            if epochs90 is None:
                log(f"    central: {TARGET} not reached within {args.max_epochs} epochs")
                epochs90 = 0  # do not probe again
        elif epochs90 > 0:
            c = central_run(epochs90)
            central.append(c)
            log(f"    central {epochs90} epoch(s): acc {c['accuracy']:.3f}, {c['seconds']:.1f}s")
    sim = {
        "clients": SIM_CLIENTS,
        "rounds": R,
        **summarise(runs, R, "sum over 5 clients"),
        "runs": runs,
    }
    fed_s = median([f["seconds"] for f in fed90]) if fed90 else None
    cen_s = median([c["seconds"] for c in central]) if central else None
    cen_train = median([c["train_s"] for c in central]) if central else None
    to90 = {
        "target": TARGET,
        "federated": {
            "rounds": r90,
            "seconds": fed_s,
            "runs": fed90,
            "round_line_in_R_run_after_start_s": median(line90) if line90 else None,
        },
        "central": {
            "epochs": epochs90 or None,
            "seconds": cen_s,
            "train_s": cen_train,
            "runs": central,
            "probes_below_target": probes,
        },
        "ratio_federated_over_central": fed_s / cen_s if fed_s and cen_s else None,
        "ratio_federated_over_central_train_only": fed_s / cen_train
        if fed_s and cen_train
        else None,
    }
    return sim, to90


def cluster(
    args: argparse.Namespace, dataset: str, work: Path, spec: Any, parts3: list[Path]
) -> dict[str, Any]:
    R = args.cluster_rounds or args.rounds
    home = work / "cluster"
    private = [a for k, p in enumerate(parts3, 1) for a in ("--private", f"node-{k}:federated={p}")]
    clients = [a for k in range(1, CLUSTER_NODES + 1) for a in ("--client", f"node-{k}")]
    runs: list[dict[str, Any]] = []
    seed = args.seed
    try:
        up = timed(
            [
                CIDFLOW,
                "cluster",
                "up",
                "--nodes",
                str(CLUSTER_NODES),
                "--home",
                str(home),
                *private,
                "--json",
            ]
        )
        log(f"  cluster up: {up['seconds']:.1f}s")
        run(cli(home, "key new"), env=ENV)
        pub = last_json(run(cli(home, PUBLISH), env=ENV)["stdout"])
        if pub["cid"] != dataset:
            raise RuntimeError(f"cluster's demo/digits is {pub['cid']}, expected {dataset}")

        def fed_run(rounds: int) -> dict[str, Any]:
            nonlocal seed
            seed += 1  # a new seed: nothing of an earlier run is in the cache
            r = timed(
                cli(
                    home,
                    "federated --dataset demo/digits",
                    *clients,
                    "--rounds",
                    str(rounds),
                    "--seed",
                    str(seed),
                    "-v",
                    "--json",
                )
            )
            out = last_json(r["stdout"])
            return {
                "seconds": r["seconds"],
                "seed": seed,
                "log": round_log(r["stderr"], r["start"]),
                "history": [h["accuracy"] for h in out["history"]],
                "clients": [h["clients"] for h in out["history"]],
            }

        for i in range(args.repeats):
            a = fed_run(R)
            b = fed_run(1)
            train = training_times(parts3, spec, a["seed"], R)
            runs.append(
                {
                    "seconds_R": a["seconds"],
                    "seconds_1": b["seconds"],
                    "seeds": [a["seed"], b["seed"]],
                    "accuracy": a["history"],
                    "clients_per_round": a["clients"],
                    "log_R": a["log"],
                    "log_1": b["log"],
                    "training_s": train,
                    "training_per_round_s": [max(t) for t in train],
                }
            )
            iv = a["log"]["intervals_s"]
            log(
                f"  cluster repeat {i}: {R} rounds {a['seconds']:.1f}s, 1 round "
                f"{b['seconds']:.1f}s, log round interval "
                f"{median(iv) if iv else float('nan'):.2f}s, training/round (max of 3) "
                f"{median(runs[-1]['training_per_round_s']):.3f}s"
            )
    finally:
        down = run([CIDFLOW, "cluster", "down", "--home", str(home)], env=ENV, check=False)
        if down["rc"] != 0:
            log(f"  cluster down failed ({down['rc']}): {down['stderr'].strip()[-500:]}")
    return {
        "nodes": CLUSTER_NODES,
        "rounds": R,
        "cluster_up_s": up["seconds"],
        **summarise(runs, R, "max over 3 clients (parallel on their nodes)"),
        "runs": runs,
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repeats", type=int, default=3, help="Runs of each measurement (median).")
    p.add_argument("--rounds", type=int, default=10, help="R, rounds of the long runs (≥ 2).")
    p.add_argument(
        "--cluster-rounds", type=int, default=None, help="R on the cluster (default: --rounds)."
    )
    p.add_argument("--max-epochs", type=int, default=10, help="Centralised: most epochs probed.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-cluster", action="store_true", help="Simulation and (b) only.")
    p.add_argument("--only-cluster", action="store_true", help="The cluster's rounds only.")
    p.add_argument("--json", action="store_true", help="Print the whole result as JSON.")
    args = p.parse_args()
    if args.rounds < 2 or (args.cluster_rounds is not None and args.cluster_rounds < 2):
        p.error("--rounds and --cluster-rounds must be at least 2")
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    sys.path.insert(0, str(ROOT))
    from artifacts.store import ArtifactStore

    work = fresh_dir("fed-rounds")
    template = work / "template"
    run(cli(template, "key new"), env=ENV)
    pub = run(cli(template, PUBLISH), env=ENV)
    dataset = last_json(pub["stdout"])["cid"]
    store = ArtifactStore(template, read_only=True)
    spec = model_spec(store, dataset, args.seed)
    parts5 = client_parts(store, dataset, SIM_CLIENTS, args.seed, work / "parts-5")
    parts3 = client_parts(store, dataset, CLUSTER_NODES, args.seed, work / "parts-3")
    del store

    res: dict[str, Any] = {
        "what": "federated round overhead and time to 0.90 (digits, MLP, FedAvg, "
        f"{PARTITION}, 1 local epoch, lr {LR}, batch {BATCH})",
        "settings": {
            "repeats": args.repeats,
            "rounds": args.rounds,
            "seed": args.seed,
            "cluster_rounds": None if args.skip_cluster else (args.cluster_rounds or args.rounds),
            "max_epochs": args.max_epochs,
        },
        "host": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "note": f"one machine with {os.cpu_count()} cores: the cluster's Prefect server, 3 node "
        "agents and the coordinator share them, so the 3 clients' parallel training competes "
        "for cores (their in-process max is a lower bound of it); training times are "
        "measured in this process, the round times in the cidflow processes",
    }
    try:
        if not args.only_cluster:
            res["simulation"], res["time_to_090"] = simulation(args, template, work, spec, parts5)
    except Exception as exc:
        traceback.print_exc()
        res["simulation"] = {"error": f"{type(exc).__name__}: {exc}"[-2000:]}
    if not args.skip_cluster:
        try:
            res["cluster"] = cluster(args, dataset, work, spec, parts3)
        except Exception as exc:
            traceback.print_exc()
            res["cluster"] = {"error": f"{type(exc).__name__}: {exc}"[-2000:]}
    path = write_result("bench_fed_rounds", res)
    if args.json:
        print(path.read_text(), end="")
        return
    print("bench_fed_rounds: " + summary(res))


def summary(res: dict[str, Any]) -> str:
    def f(x: Any, fmt: str = ".3f") -> str:
        return "n/a" if x is None else format(x, fmt)

    parts = []
    for key in ("simulation", "cluster"):
        s = res.get(key)
        if s is None:
            continue
        if "error" in s:
            parts.append(f"{key} failed")
            continue
        lg, wp = s["from_logs"], s["from_whole_processes"]
        parts.append(
            f"{key} round {f(lg['round_s'])}s (whole-process {f(wp['round_s'])}s), training "
            f"{f(lg['training_s'])}s, overhead {f(lg['overhead_s'])}s = "
            f"{f(lg['overhead_share'] and 100 * lg['overhead_share'], '.0f')}%"
        )
    t = res.get("time_to_090")
    if t:
        fe, ce = t["federated"], t["central"]
        parts.append(
            f"to {t['target']}: federated {f(fe['seconds'], '.1f')}s ({fe['rounds']} rounds) vs "
            f"central {f(ce['seconds'], '.1f')}s ({ce['epochs']} epochs) = "
            f"{f(t['ratio_federated_over_central'], '.2f')}x"
        )
    return "; ".join(parts)


if __name__ == "__main__":
    main()
