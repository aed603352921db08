"""Hugging Face import/export throughput, and chunk sharing between two models.

Model: a ~512 MiB repo in ``save_pretrained`` layout (two float32 safetensors shards of 24
random tensors, an index, config and tokenizer files), written once under bench/out/data.

- import: ``cidflow hf import DIR`` (fresh home) against ``dvc add DIR`` (fresh repo), the
  tool a publisher would otherwise version a model folder with; ``cp -r`` as the floor.
- export: ``cidflow hf export CID OUT`` (files rebuilt from zarr chunks, byte-identical; checked
  with sha256 once) against ``cp -r`` of the folder.
- sharing: a "fine-tuned" copy with one of the 24 tensors changed; new bytes stored by
  cidflow (chunks of the changed tensor only) against DVC (a whole new shard file).

Whole processes, median of ``--runs``; runs alternate tools. Files are hot in the page cache.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

from _common import (
    BIN,
    DATA,
    env_with,
    fresh_dir,
    log,
    median,
    run,
    tree_bytes,
    write_result,
)

TENSORS = 24
SHAPE = (4096, 1366)  # 22.4 MB each as float32: 24 of them ~ 512 MiB


def make_repo(folder: Path, *, tuned: bool = False) -> Path:
    """Write (once) the model repo; ``tuned`` changes the last tensor only."""
    done = folder / ".complete"
    if done.exists():
        return folder
    import torch
    from safetensors.torch import save_file

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    weights = {f"layers.{i}.weight": torch.randn(*SHAPE, generator=g) for i in range(TENSORS)}
    if tuned:
        weights[f"layers.{TENSORS - 1}.weight"] += 0.001
    index = {}
    for k in range(2):
        part = {n: t for i, (n, t) in enumerate(weights.items()) if i % 2 == k}
        name = f"model-{k + 1:05d}-of-00002.safetensors"
        save_file(part, folder / name, metadata={"format": "pt"})
        index.update(dict.fromkeys(part, name))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": index}))
    (folder / "config.json").write_text(json.dumps({"model_type": "bench", "layers": TENSORS}))
    (folder / "tokenizer.json").write_text(json.dumps({"vocab": {str(i): i for i in range(5000)}}))
    done.write_text("")
    return folder


def sha_tree(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".complete"
    }


def cidflow(*args: str, home: Path) -> dict:
    return run([str(BIN / "cidflow"), "--home", str(home), *args], env=env_with())


def dvc_repo(work: Path) -> Path:
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=work, check=True, env=env_with())
    return work


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    src = make_repo(DATA / "hf-model")
    tuned = make_repo(DATA / "hf-model-tuned", tuned=True)
    size = sum(f.stat().st_size for f in src.iterdir() if f.name != ".complete")
    mib = size / (1 << 20)
    imp, dvc, cp_in, exp, cp_out = [], [], [], [], []
    for i in range(args.runs):
        work = fresh_dir(f"hf-{i}")
        r = cidflow("hf", "import", str(src), "--json", home=work / "home")
        cid = json.loads(r["stdout"])["cid"]
        imp.append(r["seconds"])
        r = cidflow("hf", "export", cid, str(work / "out"), home=work / "home")
        exp.append(r["seconds"])
        if i == 0:
            expected = sha_tree(src)
            assert sha_tree(work / "out") == expected, "export is not byte-identical"
        (work / "dvc").mkdir()
        repo = dvc_repo(work / "dvc")
        shutil.copytree(src, repo / "model", ignore=shutil.ignore_patterns(".complete"))
        r = run([str(BIN / "dvc"), "add", "-q", "model"], cwd=repo, env=env_with())
        dvc.append(r["seconds"])
        cp_in.append(run(["cp", "-r", str(src), str(work / "copy-in")])["seconds"])
        cp_out.append(run(["cp", "-r", str(work / "out"), str(work / "copy-out")])["seconds"])
        log(f"  run {i}: import {imp[-1]:.2f}s  dvc add {dvc[-1]:.2f}s  cp {cp_in[-1]:.2f}s  "
            f"export {exp[-1]:.2f}s  cp {cp_out[-1]:.2f}s")  # fmt: skip
        shutil.rmtree(work)

    # Chunk sharing: the tuned model after the base one, in the same home / the same DVC cache.
    work = fresh_dir("hf-share")
    home = work / "home"
    cidflow("hf", "import", str(src), home=home)
    before = tree_bytes(home / "blobs")["apparent"]
    cidflow("hf", "import", str(tuned), home=home)
    cid_new = tree_bytes(home / "blobs")["apparent"] - before
    repo = work / "dvc"
    repo.mkdir()
    dvc_repo(repo)
    shutil.copytree(src, repo / "model", ignore=shutil.ignore_patterns(".complete"))
    subprocess.run([str(BIN / "dvc"), "add", "-q", "model"], cwd=repo, check=True, env=env_with())
    before = tree_bytes(repo / ".dvc" / "cache")["apparent"]
    shutil.rmtree(repo / "model")
    shutil.copytree(tuned, repo / "model", ignore=shutil.ignore_patterns(".complete"))
    subprocess.run([str(BIN / "dvc"), "add", "-q", "model"], cwd=repo, check=True, env=env_with())
    dvc_new = tree_bytes(repo / ".dvc" / "cache")["apparent"] - before
    shutil.rmtree(work)

    res = {
        "what": "hf import/export of a 512 MiB safetensors model repo (whole process)",
        "model_bytes": size,
        "runs": args.runs,
        "import_s": imp, "dvc_add_s": dvc, "cp_in_s": cp_in, "export_s": exp, "cp_out_s": cp_out,
        "import_mib_s": mib / median(imp), "dvc_add_mib_s": mib / median(dvc),
        "cp_mib_s": mib / median(cp_in), "export_mib_s": mib / median(exp),
        "cp_out_mib_s": mib / median(cp_out),
        "import_vs_dvc_add": median(dvc) / median(imp),
        "export_vs_cp": median(cp_out) / median(exp),
        "tuned_new_bytes_cidflow": cid_new, "tuned_new_bytes_dvc": dvc_new,
        "changed_tensor_bytes": SHAPE[0] * SHAPE[1] * 4,
    }  # fmt: skip
    write_result("bench_hf", res)
    print(
        f"bench_hf: import {res['import_mib_s']:.0f} MiB/s ({res['import_vs_dvc_add']:.2f}x dvc "
        f"add, cp {res['cp_mib_s']:.0f} MiB/s); export {res['export_mib_s']:.0f} MiB/s "
        f"({res['export_vs_cp']:.2f}x cp); tuned model new bytes: cidflow "
        f"{cid_new / 2**20:.1f} MiB, dvc {dvc_new / 2**20:.1f} MiB "
        f"(changed tensor {res['changed_tensor_bytes'] / 2**20:.1f} MiB)"
    )


if __name__ == "__main__":
    main()
