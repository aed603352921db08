"""Test helpers: small Hugging Face model repos, as local folders and in hub-cache layout.

Everything is built here from seeded random tensors (no network): ``make_model_repo`` writes
what ``save_pretrained`` would (safetensors weights, config, tokenizer files), and
``cache_repo`` lays a folder out as the hub cache does (``models--org--name/blobs``,
``refs/main``, ``snapshots/<commit>`` with relative symlinks into ``blobs``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file


def tensors(seed: int, *, hidden: int = 64, layers: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {"embed.weight": torch.randn(500, hidden, generator=g)}
    for i in range(layers):
        out[f"layers.{i}.attn.weight"] = torch.randn(hidden, hidden, generator=g)
        out[f"layers.{i}.norm.weight"] = torch.ones(hidden).to(torch.bfloat16)
        out[f"layers.{i}.mlp.bias"] = torch.randn(hidden, generator=g).to(torch.float16)
    out["step"] = torch.tensor(7, dtype=torch.int64)
    return out


def make_model_repo(
    folder: Path, weights: dict[str, torch.Tensor], *, shards: int = 1, extra: bool = True
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    names = list(weights)
    if shards == 1:
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    else:
        index: dict[str, str] = {}
        for k in range(shards):
            part = {n: weights[n] for n in names[k::shards]}
            fname = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
            save_file(part, folder / fname, metadata={"format": "pt"})
            index.update(dict.fromkeys(part, fname))
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": index}, indent=2)
        )
    (folder / "config.json").write_text(json.dumps({"model_type": "tiny", "hidden": 64}))
    if extra:
        (folder / "tokenizer.json").write_text(json.dumps({"vocab": {"a": 0, "b": 1}}))
        (folder / "tokenizer_config.json").write_text("{}\n")
        (folder / "README.md").write_text("# tiny test model\n")
    return folder


def cache_repo(
    cache: Path,
    repo_id: str,
    source: Path,
    *,
    commit: str | None = None,
    ref: str = "main",
    repo_type: str = "model",
) -> Path:
    """Copy ``source`` into the hub cache layout; return the snapshot folder."""
    repo = cache / (f"{repo_type}s--" + repo_id.replace("/", "--"))
    files = sorted(p for p in source.rglob("*") if p.is_file())
    digest = hashlib.sha1(b"".join(p.read_bytes() for p in files)).hexdigest()
    commit = commit or digest
    snapshot = repo / "snapshots" / commit
    for p in files:
        data = p.read_bytes()
        etag = hashlib.sha256(data).hexdigest()
        blob = repo / "blobs" / etag
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / p.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return snapshot


def sha256_tree(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
