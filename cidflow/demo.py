"""``make demo``: the main job, end to end, on the embedded defaults.

Adds scikit-learn's digits (shipped inside the package: no download) as a dataset folder,
shows it, verifies it, exports it and checks the export is byte-identical; publishes it in the
signed registry, publishes a second version with one file changed (only the change is stored),
pulls the first version back and verifies the registry's log; then trains an MLP on it,
evaluates, infers, publishes the model with its signed receipt, shows its lineage, and trains
again to show the cache hit; runs federated training in simulation (5 non-IID clients) and
then on a local 3-node cluster where each node holds a private non-IID part of the digits,
ending with the accuracy table; and shows replicated storage surviving a stopped node. Every
step runs the real ``cidflow`` command, as a user would.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

console = Console()
ROOT = Path.cwd() / "demo-home"
CIDFLOW = [sys.executable, "-m", "cidflow"]


def run(*args: str, capture: bool = False, home: Path | None = None) -> str:
    home = home or ROOT / "home"
    shown = " ".join(["cidflow", *(["--home", str(home)] if home.name != "home" else []), *args])
    shown = shown.replace(str(ROOT) + "/", "")
    console.print(f"\n[bold cyan]$ {shown}[/bold cyan]")
    proc = subprocess.run([*CIDFLOW, "--home", str(home), *args], text=True, capture_output=True)
    if proc.stdout:
        console.print(proc.stdout.rstrip(), highlight=False, markup=False)
    if proc.stderr:
        console.print(proc.stderr.rstrip(), style="dim", highlight=False, markup=False)
    if proc.returncode != 0:
        console.print(f"[red]failed with exit code {proc.returncode}[/red]")
        sys.exit(proc.returncode)
    return proc.stdout


def make_dataset(folder: Path) -> None:
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.data.astype(np.float32) / 16.0
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    cut = int(0.8 * len(y))
    for split, idx in (("train", order[:cut]), ("test", order[cut:])):
        (folder / split).mkdir(parents=True)
        np.save(folder / split / "x.npy", x[idx])
        np.save(folder / split / "y.npy", y[idx])
    (folder / "README.md").write_text(
        "# digits\n\n8x8 handwritten digits (scikit-learn), pixels scaled to [0, 1].\n"
        f"{cut} training and {len(y) - cut} test images; labels 0-9.\n"
    )
    with open(folder / "labels.csv", "w") as f:
        f.write("label,name\n" + "".join(f"{i},digit-{i}\n" for i in range(10)))


def sha256_tree(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def main() -> None:
    started = time.perf_counter()
    shutil.rmtree(ROOT, ignore_errors=True)
    data = ROOT / "digits"
    console.rule("[bold]cidflow demo: a dataset as a content-addressed artifact")
    console.print(f"home: {ROOT / 'home'}   (fresh; explore it afterwards with --home)")
    make_dataset(data)
    console.print(f"made {data} from sklearn.datasets.load_digits()")

    cid = json.loads(run("add", str(data), "--json"))["cid"]
    run("show", cid)
    run("verify", cid)
    out = ROOT / "export"
    run("get", cid, str(out))
    same = sha256_tree(data) == sha256_tree(out)
    console.print(
        f"export byte-identical to the source: [bold]{'yes' if same else 'NO'}[/bold] "
        f"({len(sha256_tree(out))} files, sha256 compared)"
    )
    if not same:
        sys.exit(1)

    console.rule("[bold]publish it in the signed marketplace registry")
    run("key", "new")
    run("publish", cid, "--name", "demo/digits", "--version", "1.0.0", "--license", "BSD-3-Clause",
        "--description", "8x8 handwritten digits, train/test split", "--tag", "vision")  # fmt: skip

    console.rule("[bold]a new version: relabel one class name, publish again")
    labels = data / "labels.csv"
    labels.write_text(labels.read_text().replace("digit-7", "seven"))
    before = json.loads(run("stats", "--json", capture=True))
    run("publish", str(data), "--name", "demo/digits", "--version", "1.1.0",
        "--license", "BSD-3-Clause", "--description", "digits, relabelled")  # fmt: skip
    after = json.loads(run("stats", "--json"))
    console.print(
        f"version 1.1.0 stored {after['stored_bytes'] - before['stored_bytes']} new bytes for a "
        f"{after['logical_bytes'] - before['logical_bytes']}-byte version "
        f"(dedup x{after['dedup_ratio']:.2f})"
    )
    run("versions", "demo/digits")
    run("info", "demo/digits")
    pulled = ROOT / "pulled"
    run("pull", "demo/digits@1.0.0", str(pulled))
    same = sha256_tree(out) == sha256_tree(pulled)
    console.print(f"pulled 1.0.0 equals the first export: [bold]{'yes' if same else 'NO'}[/bold]")
    if not same:
        sys.exit(1)
    run("registry", "verify")

    console.rule("[bold]train, evaluate and infer as Prefect flows; publish the model")
    trained = json.loads(run("train", "--dataset", "demo/digits@1.0.0", "--model", "mlp",
                             "--epochs", "8", "--seed", "0", "--json"))  # fmt: skip
    run("evaluate", "--model", trained["model"], "--dataset", "demo/digits@1.0.0")
    run("infer", "--model", trained["model"], "--dataset", "demo/digits@1.0.0")
    run("publish", trained["model"], "--name", "demo/digits-mlp", "--version", "1.0.0",
        "--license", "MIT", "--receipt", trained["receipt"],
        "--description", "MLP trained on demo/digits@1.0.0")  # fmt: skip
    run("search", "demo")
    run("lineage", "demo/digits-mlp")

    console.rule("[bold]the same training again: served from the cache")
    started_again = time.perf_counter()
    again = json.loads(run("train", "--dataset", "demo/digits@1.0.0", "--model", "mlp",
                           "--epochs", "8", "--seed", "0", "--json"))  # fmt: skip
    console.print(
        f"cached: [bold]{again['cached']}[/bold], same model CID: "
        f"[bold]{again['model'] == trained['model']}[/bold] "
        f"({time.perf_counter() - started_again:.1f}s: the key is computed, nothing runs)"
    )
    if not again["cached"] or again["model"] != trained["model"]:
        sys.exit(1)
    run("log")
    run("ls")
    run("gc", "--dry-run")
    federated_part()
    cluster_part()
    console.rule(f"[bold green]done in {time.perf_counter() - started:.1f}s")


def federated_part() -> None:
    """Federated learning in simulation: 5 clients with non-IID parts of the digits."""
    console.rule("[bold]federated learning (simulation): 5 non-IID clients, only updates travel")
    run("federated", "--dataset", "demo/digits@1.0.0", "--clients", "5", "--partition",
        "dirichlet:0.5", "--rounds", "10", "--strategy", "fedavg", "--model", "mlp", "--seed", "0",
        "--plot", str(ROOT / "federated.png"))  # fmt: skip


def private_parts(clients: int) -> list[Path]:
    """The digits cut into non-IID parts (Dirichlet 0.5), one file per node: private data."""
    from artifacts.store import ArtifactStore
    from flows.federated.flow import write_client_parts

    pub = json.loads(run("publish", "sklearn:digits", "--name", "demo/sk-digits", "--version",
                         "1.0.0", "--json"))  # fmt: skip
    store = ArtifactStore(ROOT / "home", read_only=True)
    parts = write_client_parts(store, pub["cid"], clients, "dirichlet:0.5", 0, ROOT / "private")
    for k, path in enumerate(parts, 1):
        console.print(f"node-{k}'s private part: {path.relative_to(ROOT)}")
    return parts


def cluster_part() -> None:
    """Three node agents and a Prefect server on 127.0.0.1: federated training on the nodes'
    private data, replicated storage, a flow run on a chosen node, a node stopped, the data
    still there, replication restored."""
    import os
    import signal

    cl = ROOT / "cluster"
    console.rule("[bold]a local cluster: a Prefect server and 3 node agents (r = 2)")
    private = [f"node-{k}:federated={p}" for k, p in enumerate(private_parts(3), 1)]
    up = json.loads(run("cluster", "up", "--nodes", "3", "--home", str(cl), "--json",
                        *(a for p in private for a in ("--private", p)), home=cl))  # fmt: skip
    try:
        run("key", "new", home=cl)
        run("publish", "sklearn:digits", "--name", "demo/digits", "--version", "1.0.0",
            "--license", "BSD-3-Clause", home=cl)  # fmt: skip
        run("nodes", home=cl)
        console.rule("[bold]federated training on the cluster: each node's data stays on it")
        run("federated", "--dataset", "demo/digits", "--client", "node-1", "--client", "node-2",
            "--client", "node-3", "--rounds", "5", "--seed", "0", home=cl)  # fmt: skip
        trained = json.loads(run("train", "--dataset", "demo/digits", "--model", "mlp",
                                 "--epochs", "4", "--seed", "0", "--json", home=cl))  # fmt: skip
        console.print(f"ran on [bold]{trained['node']}[/bold]: {trained['scheduling']}")
        victim = up["nodes"][0]
        os.killpg(victim["pid"], signal.SIGTERM)
        console.print(f"\n[bold]stopped {victim['name']}[/bold] (pid {victim['pid']})")
        time.sleep(1.0)
        run("pull", "demo/digits@1.0.0", str(ROOT / "pulled-from-cluster"), home=cl)
        run("lineage", trained["model"], home=cl)
        run("store", "repair", home=cl)
        run("cluster", "status", "--home", str(cl), home=cl)
    finally:
        run("cluster", "down", "--home", str(cl), home=cl)


if __name__ == "__main__":
    main()
