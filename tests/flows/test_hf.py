"""Hugging Face repos in and out: local folders and the hub cache (``HF_HUB_OFFLINE=1``), every
file back byte-identical, tensors as zarr arrays, chunks shared between models, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hub import cache_repo, make_model_repo, sha256_tree, tensors
from safetensors.torch import load_file

from artifacts.store import ArtifactStore
from flows.errors import HubError
from flows.hf import HF_ATTR, export_hf, hf_tensors, import_hf, push_hf, resolve_hub_source


@pytest.fixture
def hub_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def _blobs(store: ArtifactStore) -> dict[str, int]:
    return {str(c): store.blobs.stat(c).size for c in store.blobs.iter_cids()}


@pytest.mark.parametrize("shards", [1, 3])
def test_local_folder_round_trips_byte_identical(tmp_path: Path, shards: int) -> None:
    src = make_model_repo(tmp_path / "repo", tensors(1), shards=shards)
    (src / "subdir").mkdir()
    (src / "subdir" / "notes.txt").write_text("kept\n")
    (src / ".git").mkdir()
    (src / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    store = ArtifactStore(tmp_path / "home")
    cid = import_hf(store, str(src))
    art = store.open_artifact(cid)
    assert art.kind == "files"
    assert art.attrs[HF_ATTR] == {"repo_type": "model"}  # a plain folder: no repo id, no commit
    out = tmp_path / "out"
    export_hf(store, cid, out)
    expected = {k: v for k, v in sha256_tree(src).items() if not k.startswith(".git/")}
    assert sha256_tree(out) == expected
    assert import_hf(store, str(src)) == cid  # same content, same CID


def test_tensors_are_zarr_arrays_with_their_values_and_dtypes(tmp_path: Path) -> None:
    weights = tensors(2)
    src = make_model_repo(tmp_path / "repo", weights)
    store = ArtifactStore(tmp_path / "home")
    cid = import_hf(store, str(src))
    art = store.open_artifact(cid)
    arrays = art.arrays()
    embed = art.array("model.safetensors/embed.weight")
    assert embed.shape == (500, 64)
    np.testing.assert_array_equal(embed[...], weights["embed.weight"].numpy())
    norm = arrays["model.safetensors/layers.0.norm.weight"].attributes["cidflow.array"]["tensor"]
    assert norm == {"name": "layers.0.norm.weight", "dtype": "BF16", "torch_dtype": "bfloat16"}
    loaded = hf_tensors(store, cid)
    assert set(loaded) == set(weights)
    for name, tensor in weights.items():
        assert loaded[name].dtype == tensor.dtype
        assert torch.equal(loaded[name], tensor), name


def test_repo_id_from_the_hub_cache_offline(tmp_path: Path, hub_env: Path) -> None:
    v1 = make_model_repo(tmp_path / "v1", tensors(3))
    v2 = make_model_repo(tmp_path / "v2", tensors(4))
    snap1 = cache_repo(hub_env, "acme/tiny", v1, commit="a" * 40, ref="v1")
    cache_repo(hub_env, "acme/tiny", v2, commit="b" * 40, ref="main")
    store = ArtifactStore(tmp_path / "home")

    latest = import_hf(store, "acme/tiny")
    assert store.open_artifact(latest).attrs[HF_ATTR] == {
        "repo_type": "model", "repo_id": "acme/tiny", "commit": "b" * 40,
    }  # fmt: skip
    tagged = import_hf(store, "acme/tiny", revision="v1")
    by_commit = import_hf(store, "acme/tiny", revision="a" * 40)
    assert tagged == by_commit != latest
    export_hf(store, tagged, tmp_path / "out")
    assert sha256_tree(tmp_path / "out") == sha256_tree(v1)
    # The snapshot folder itself, given as a folder, is recognised as the same repo and commit.
    assert import_hf(store, str(snap1)) == tagged


def test_models_sharing_tensors_share_chunks(tmp_path: Path) -> None:
    base = tensors(5, hidden=256, layers=4)
    tuned = dict(base)
    tuned["layers.3.attn.weight"] = base["layers.3.attn.weight"] + 0.01  # "fine-tuned" one layer
    a = make_model_repo(tmp_path / "a", base)
    b = make_model_repo(tmp_path / "b", tuned)
    store = ArtifactStore(tmp_path / "home")
    import_hf(store, str(a))
    before = _blobs(store)
    cid_b = import_hf(store, str(b))
    added = sum(size for cid, size in _blobs(store).items() if cid not in before)
    changed = tuned["layers.3.attn.weight"].numel() * 4
    model_bytes = (b / "model.safetensors").stat().st_size
    assert changed < added < changed + 64 * 1024, (added, changed, model_bytes)
    assert added < model_bytes / 4
    export_hf(store, cid_b, tmp_path / "out")
    assert sha256_tree(tmp_path / "out") == sha256_tree(b)


@pytest.mark.parametrize(
    ("damage", "expect_tensors"),
    [("header-too-long", False), ("wrong-size", False), ("trailing-bytes", True)],
)
def test_unusual_safetensors_still_come_back_byte_identical(
    tmp_path: Path, damage: str, expect_tensors: bool
) -> None:
    src = make_model_repo(tmp_path / "repo", tensors(6), extra=False)
    path = src / "model.safetensors"
    data = bytearray(path.read_bytes())
    if damage == "header-too-long":
        data[:8] = (len(data) + 10).to_bytes(8, "little")
    elif damage == "wrong-size":
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + n])
        header["embed.weight"]["shape"] = [499, 64]
        raw = json.dumps(header).encode().ljust(n)
        data[8 : 8 + n] = raw[:n] if len(raw) <= n else raw
    else:
        data += b"trailing"
    path.write_bytes(bytes(data))
    store = ArtifactStore(tmp_path / "home")
    cid = import_hf(store, str(src))
    export_hf(store, cid, tmp_path / "out")
    assert sha256_tree(tmp_path / "out") == sha256_tree(src)
    assert bool(hf_tensors(store, cid)) is expect_tensors


def test_hf_tensors_match_the_reference_loader(tmp_path: Path) -> None:
    src = make_model_repo(tmp_path / "repo", tensors(7), shards=2)
    store = ArtifactStore(tmp_path / "home")
    loaded = hf_tensors(store, import_hf(store, str(src)))
    reference: dict[str, torch.Tensor] = {}
    for shard in sorted(src.glob("*.safetensors")):
        reference.update(load_file(shard))
    assert loaded.keys() == reference.keys()
    assert all(torch.equal(loaded[k], reference[k]) for k in reference)


def test_bad_sources_are_clear_errors(tmp_path: Path, hub_env: Path) -> None:
    store = ArtifactStore(tmp_path / "home")
    src = make_model_repo(tmp_path / "repo", tensors(8))
    with pytest.raises(HubError, match="not in the Hugging Face cache"):
        import_hf(store, "acme/missing")
    with pytest.raises(HubError, match="neither a folder nor"):
        import_hf(store, "not a repo id!")
    with pytest.raises(HubError, match="is a file"):
        import_hf(store, str(src / "config.json"))
    with pytest.raises(HubError, match="--revision applies to a repo id"):
        import_hf(store, str(src), revision="main")
    (tmp_path / "empty").mkdir()
    with pytest.raises(HubError, match="holds no files"):
        import_hf(store, str(tmp_path / "empty"))
    arrays = store.put_arrays({"x": np.arange(3)})
    with pytest.raises(HubError, match="not a repo"):
        export_hf(store, arrays, tmp_path / "out")
    with pytest.raises(HubError, match="HF_HUB_OFFLINE is set"):
        push_hf(store, import_hf(store, str(src)), "acme/tiny")
    with pytest.raises(HubError, match="not a Hugging Face repo id"):
        push_hf(store, arrays, "no-slash")
    assert resolve_hub_source(str(src)).repo_id is None


def _cli(home: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "cidflow", "--home", str(home), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def test_cli_import_export_contract(tmp_path: Path) -> None:
    src = make_model_repo(tmp_path / "repo", tensors(9), shards=2)
    cache = tmp_path / "hf-cache"
    cache_repo(cache, "acme/tiny", src, commit="c" * 40)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    home = tmp_path / "home"

    proc = _cli(home, env, "hf", "import", str(src), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["tensors"] == len(tensors(9))
    assert out["files"] == 7
    proc = _cli(home, env, "hf", "export", out["cid"], str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert sha256_tree(tmp_path / "out") == sha256_tree(src)

    by_id = json.loads(_cli(home, env, "hf", "import", "acme/tiny", "--json").stdout)
    assert by_id["hf"] == {"repo_type": "model", "repo_id": "acme/tiny", "commit": "c" * 40}

    for args, fragment in [
        (("hf", "import", "acme/missing"), "not in the Hugging Face cache"),
        (("hf", "import", str(src), "--revision", "main"), "--revision applies"),
        (("hf", "export", out["cid"], str(tmp_path / "out")), "is not empty"),
        (("hf", "export", "bafkreinotacid", str(tmp_path / "o2")), "bafkreinotacid"),
        (("hf", "push", out["cid"], "acme/tiny"), "HF_HUB_OFFLINE"),
    ]:
        proc = _cli(home, env, *args)
        assert proc.returncode == 1, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith("error:")
        assert fragment in lines[0], lines
    assert not (tmp_path / "o2").exists()


def test_dataset_from_a_hub_dataset_repo(tmp_path: Path, hub_env: Path) -> None:
    from flows.datasets import load_source

    data = tmp_path / "ds"
    (data / "data").mkdir(parents=True)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 4)).astype(np.float32), np.arange(60) % 3
    np.savez(data / "data" / "train.npz", x=x, y=y)
    (data / "README.md").write_text("# a dataset card\n")
    cache_repo(hub_env, "acme/points", data, commit="d" * 40, repo_type="dataset")

    ds = load_source("hf:acme/points", test_size=None)
    np.testing.assert_array_equal(ds.arrays["x"], x)
    np.testing.assert_array_equal(ds.arrays["y"], y)
    assert ds.schema["source"] == {
        "kind": "hf", "name": "acme/points", "file": "data/train.npz", "commit": "d" * 40,
    }  # fmt: skip
    assert load_source("hf:acme/points@main:data/train.npz", test_size=None).schema == ds.schema

    from flows.errors import DatasetError

    with pytest.raises(DatasetError, match="not in the Hugging Face cache"):
        load_source("hf:acme/nothing")
    with pytest.raises(DatasetError, match="no file"):
        load_source("hf:acme/points:../escape.npz")
    np.save(data / "other.npy", x)
    cache_repo(hub_env, "acme/two", data, commit="e" * 40, repo_type="dataset")
    with pytest.raises(DatasetError, match="name the data file"):
        load_source("hf:acme/two")
