"""Dataset sources: scikit-learn samples, numpy files, folders, CSV, Parquet and DVC revisions,
stored in a real ArtifactStore; every bad source gives a clear DatasetError."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from artifacts.store import ArtifactStore
from flows.datasets import Dataset, load_source, put_dataset
from flows.errors import DatasetError, FlowError

DVC = Path(sys.executable).parent / "dvc"


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "home")


def _shapes(ds: Dataset) -> dict[str, tuple[tuple[int, ...], str]]:
    return {name: (a.shape, str(a.dtype)) for name, a in ds.arrays.items()}


# --------------------------------------------------------------------------- scikit-learn


def test_sklearn_digits_split_and_stable_cid(store: ArtifactStore) -> None:
    ds = load_source("sklearn:digits")
    assert _shapes(ds) == {
        "train/x": ((1437, 64), "float32"),
        "train/y": ((1437,), "int64"),
        "test/x": ((360, 64), "float32"),
        "test/y": ((360,), "int64"),
    }
    schema = ds.schema
    assert schema["source"] == {"kind": "sklearn", "name": "digits"}
    assert schema["rows"] == 1797
    assert schema["classes"] == list(range(10))
    assert schema["num_classes"] == 10
    assert schema["split"] == {
        "method": "stratified", "test_size": 0.2, "seed": 0, "train_rows": 1437, "test_rows": 360,
    }  # fmt: skip
    assert schema["arrays"]["train/x"] == {"shape": [1437, 64], "dtype": "float32"}
    # Stratified: every class appears in the test split.
    assert set(ds.arrays["test/y"].tolist()) == set(range(10))

    first = put_dataset(store, "sklearn:digits")
    second = put_dataset(store, "sklearn:digits")
    assert first == second
    art = store.open_artifact(first)
    assert art.attrs["schema"] == schema
    assert put_dataset(store, "sklearn:digits", seed=1) != first
    assert put_dataset(store, "sklearn:digits", test_size=0.3) != first


def test_split_is_deterministic_by_seed() -> None:
    a = load_source("sklearn:wine", seed=3)
    b = load_source("sklearn:wine", seed=3)
    c = load_source("sklearn:wine", seed=4)
    for name in a.arrays:
        np.testing.assert_array_equal(a.arrays[name], b.arrays[name])
    assert not np.array_equal(a.arrays["test/y"], c.arrays["test/y"]) or not np.array_equal(
        a.arrays["test/x"], c.arrays["test/x"]
    )


def test_sklearn_iris_without_split(store: ArtifactStore) -> None:
    ds = load_source("sklearn:iris", test_size=None)
    assert _shapes(ds) == {"x": ((150, 4), "float32"), "y": ((150,), "int64")}
    assert ds.schema["split"] == {"method": "none"}
    assert ds.schema["class_names"] == ["setosa", "versicolor", "virginica"]
    assert ds.schema["classes"] == [0, 1, 2]
    cid = put_dataset(store, "sklearn:iris", test_size=None)
    assert cid == put_dataset(store, "sklearn:iris", test_size=None)


def test_sklearn_breast_cancer_loads() -> None:
    ds = load_source("sklearn:breast_cancer", test_size=0.5)
    assert ds.schema["rows"] == 569
    assert ds.schema["classes"] == [0, 1]


# --------------------------------------------------------------------------- numpy files


def test_npy_is_unsupervised_x(tmp_path: Path, store: ArtifactStore) -> None:
    path = tmp_path / "feat.npy"
    np.save(path, np.arange(24, dtype=np.int32).reshape(6, 4))
    ds = load_source(str(path))
    assert _shapes(ds) == {"x": ((6, 4), "float32")}
    assert ds.schema["supervised"] is False
    assert ds.schema["source"] == {"kind": "npy", "name": "feat.npy"}
    assert "classes" not in ds.schema
    cid = put_dataset(store, str(path))
    # No absolute path in the artifact: the same file elsewhere gives the same CID.
    other = tmp_path / "elsewhere"
    other.mkdir()
    shutil.copy(path, other / "feat.npy")
    assert put_dataset(store, str(other / "feat.npy")) == cid


def test_npz_keeps_x_y_and_splits(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "data.npz"
    np.savez(path, x=rng.normal(size=(40, 3, 2)), y=np.repeat([0, 1, 2, 3], 10))
    ds = load_source(str(path), test_size=0.25, seed=7)
    assert _shapes(ds) == {
        "train/x": ((30, 3, 2), "float32"),
        "train/y": ((30,), "int64"),
        "test/x": ((10, 3, 2), "float32"),
        "test/y": ((10,), "int64"),
    }
    assert ds.schema["split"]["method"] == "stratified"
    assert ds.schema["features_shape"] == [3, 2]
    unsplit = load_source(str(path), test_size=None)
    assert set(unsplit.arrays) == {"x", "y"}


def test_folder_with_x_and_y(tmp_path: Path) -> None:
    folder = tmp_path / "plain"
    folder.mkdir()
    np.save(folder / "x.npy", np.ones((10, 2)))
    np.save(folder / "y.npy", np.array([0, 1] * 5))
    ds = load_source(str(folder), test_size=None)
    assert _shapes(ds) == {"x": ((10, 2), "float32"), "y": ((10,), "int64")}
    assert ds.schema["source"] == {"kind": "folder", "name": "plain"}


def test_folder_with_train_and_test(tmp_path: Path, store: ArtifactStore) -> None:
    folder = tmp_path / "mnistish"
    for part, n in (("train", 12), ("test", 4)):
        (folder / part).mkdir(parents=True)
        np.save(folder / part / "x.npy", np.zeros((n, 2, 2), dtype=np.uint8))
        np.save(folder / part / "y.npy", np.array(["cat", "dog"] * (n // 2)))
    ds = load_source(str(folder))
    assert _shapes(ds) == {
        "train/x": ((12, 2, 2), "float32"),
        "train/y": ((12,), "int64"),
        "test/x": ((4, 2, 2), "float32"),
        "test/y": ((4,), "int64"),
    }
    assert ds.schema["split"] == {"method": "given", "train_rows": 12, "test_rows": 4}
    assert ds.schema["class_names"] == ["cat", "dog"]
    assert ds.arrays["test/y"].tolist() == [0, 1, 0, 1]
    assert put_dataset(store, str(folder)) == put_dataset(store, str(folder))


# --------------------------------------------------------------------------- tables


def _table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "a": [0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5, 8.5, 9.5],
            "b": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
            "species": ["dog", "cat", "owl", "cat", "dog", "owl", "cat", "dog", "owl", "cat"],
        }
    )


def test_csv_with_string_label_column(tmp_path: Path, store: ArtifactStore) -> None:
    path = tmp_path / "animals.csv"
    _table().to_csv(path, index=False)
    ds = load_source(str(path), label="species", test_size=None)
    assert _shapes(ds) == {"x": ((10, 2), "float32"), "y": ((10,), "int64")}
    assert ds.schema["class_names"] == ["cat", "dog", "owl"]
    assert ds.schema["features"] == ["a", "b"]
    assert ds.schema["label"] == "species"
    assert ds.arrays["y"].tolist() == [1, 0, 2, 0, 1, 2, 0, 1, 2, 0]
    np.testing.assert_array_equal(ds.arrays["x"][:, 1], np.arange(1, 11, dtype=np.float32))
    split = load_source(str(path), label="species", test_size=0.3)
    assert split.schema["split"]["train_rows"] + split.schema["split"]["test_rows"] == 10
    assert put_dataset(store, str(path), label="species") == put_dataset(
        store, str(path), label="species"
    )


def test_csv_default_label_and_unsupervised(tmp_path: Path) -> None:
    with_target = tmp_path / "t.csv"
    pd.DataFrame({"f": [1.0, 2.0, 3.0, 4.0], "target": [0, 1, 0, 1]}).to_csv(
        with_target, index=False
    )
    ds = load_source(str(with_target), test_size=None)
    assert ds.schema["label"] == "target"
    assert ds.arrays["y"].tolist() == [0, 1, 0, 1]
    no_label = tmp_path / "u.csv"
    pd.DataFrame({"f": [1.0, 2.0], "g": [3, 4]}).to_csv(no_label, index=False)
    unsup = load_source(str(no_label))
    assert _shapes(unsup) == {"x": ((2, 2), "float32")}
    assert unsup.schema["supervised"] is False


def test_parquet(tmp_path: Path, store: ArtifactStore) -> None:
    path = tmp_path / "animals.parquet"
    frame = _table().rename(columns={"species": "label"})
    frame.to_parquet(path, engine="pyarrow", index=False)
    ds = load_source(str(path), test_size=None)
    assert ds.schema["source"] == {"kind": "parquet", "name": "animals.parquet"}
    assert ds.schema["class_names"] == ["cat", "dog", "owl"]
    assert _shapes(ds) == {"x": ((10, 2), "float32"), "y": ((10,), "int64")}
    assert put_dataset(store, str(path)) == put_dataset(store, str(path))


# --------------------------------------------------------------------------- DVC


def _run(*args: str | Path, cwd: Path) -> None:
    subprocess.run([str(a) for a in args], cwd=cwd, check=True, capture_output=True)


def test_dvc_path_at_old_revision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: ArtifactStore
) -> None:
    assert shutil.which("git"), "git is needed (the repository is a git checkout)"
    assert DVC.exists(), "dvc is installed by make (the dev extra)"
    repo = tmp_path / "repo"
    repo.mkdir()
    for key, value in {
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid",
    }.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    git = ("git", "-c", "commit.gpgsign=false")
    _run(*git, "init", "-q", cwd=repo)
    _run(DVC, "init", "-q", cwd=repo)
    pd.DataFrame({"f": [1.0, 2.0, 3.0, 4.0], "y": [0, 1, 0, 1]}).to_csv(
        repo / "data.csv", index=False
    )
    _run(DVC, "add", "-q", "data.csv", cwd=repo)
    _run(*git, "add", "-A", cwd=repo)
    _run(*git, "commit", "-q", "-m", "v1", cwd=repo)
    pd.DataFrame({"f": [9.0, 8.0, 7.0], "y": [1, 1, 0]}).to_csv(repo / "data.csv", index=False)
    _run(DVC, "add", "-q", "data.csv", cwd=repo)
    _run(*git, "add", "-A", cwd=repo)
    _run(*git, "commit", "-q", "-m", "v2", cwd=repo)
    monkeypatch.chdir(repo)

    old = load_source("dvc:data.csv@HEAD~1", test_size=None)
    assert old.arrays["x"][:, 0].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert old.arrays["y"].tolist() == [0, 1, 0, 1]
    assert old.schema["source"] == {
        "kind": "dvc", "name": "data.csv", "format": "csv", "rev": "HEAD~1",
    }  # fmt: skip
    new = load_source("dvc:data.csv", revision="HEAD", test_size=None)
    assert new.arrays["x"][:, 0].tolist() == [9.0, 8.0, 7.0]
    cid = put_dataset(store, "dvc:data.csv@HEAD~1", test_size=None)
    assert cid == put_dataset(store, "dvc:data.csv@HEAD~1", test_size=None)

    with pytest.raises(DatasetError, match=r"cannot read dvc:data\.csv@no-such-rev"):
        load_source("dvc:data.csv@no-such-rev")
    with pytest.raises(DatasetError, match=r"cannot read dvc:missing\.csv@HEAD"):
        load_source("dvc:missing.csv@HEAD")
    with pytest.raises(DatasetError, match="names revision 'HEAD' but revision='HEAD~1'"):
        load_source("dvc:data.csv@HEAD", revision="HEAD~1")


def test_dvc_outside_a_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError, match=r"cannot read dvc:data\.csv@HEAD"):
        load_source("dvc:data.csv@HEAD")


# --------------------------------------------------------------------------- bad sources


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    empty_csv = tmp_path / "empty.csv"
    empty_csv.write_text("a,b,label\n")
    mismatch = tmp_path / "mismatch.npz"
    np.savez(mismatch, x=np.zeros((5, 2)), y=np.zeros(4, dtype=np.int64))
    text_feature = tmp_path / "text.csv"
    pd.DataFrame({"name": ["a", "b"], "v": [1, 2], "label": [0, 1]}).to_csv(
        text_feature, index=False
    )
    empty_npy = tmp_path / "empty.npy"
    np.save(empty_npy, np.zeros((0, 3)))
    no_x = tmp_path / "nox"
    no_x.mkdir()
    junk = tmp_path / "junk.csv.gz.txt"
    junk.write_text("x")
    fractions = tmp_path / "frac.npz"
    np.savez(fractions, x=np.zeros((4, 1)), y=np.array([0.5, 1.0, 0.0, 1.0]))
    corrupt = tmp_path / "corrupt.npy"
    corrupt.write_bytes(b"not numpy at all")
    return {
        "empty_csv": empty_csv, "mismatch": mismatch, "text_feature": text_feature,
        "empty_npy": empty_npy, "no_x": no_x, "junk": junk, "fractions": fractions,
        "corrupt": corrupt,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("source", "kwargs", "message"),
    [
        ("s3:bucket/key.npy", {}, r"unknown dataset scheme 's3'"),
        ("sklearn:mnist", {}, r"unknown scikit-learn dataset 'mnist' \(expected one of"),
        ("sklearn:fetch_openml", {}, r"downloads data from the network"),
        ("{tmp}/nowhere.csv", {}, r"dataset source not found: .*nowhere\.csv"),
        ("{empty_csv}", {}, r"is empty: no rows"),
        ("{empty_npy}", {}, r"is empty: no rows"),
        ("{mismatch}", {}, r"x and y lengths differ .*: 5 rows vs 4 labels"),
        ("{text_feature}", {}, r"non-numeric feature columns in .*text\.csv: name"),
        ("{text_feature}", {"label": "nope"}, r"label column 'nope' not in"),
        ("{no_x}", {}, r"holds no x\.npy"),
        ("{junk}", {}, r"unsupported dataset file type '\.txt'"),
        ("{fractions}", {}, r"must be integer class ids"),
        ("{corrupt}", {}, r"cannot read .*corrupt\.npy"),
        ("sklearn:iris", {"test_size": 0.0}, r"test_size must be a fraction in \(0, 1\)"),
        ("sklearn:iris", {"test_size": 1.0}, r"test_size must be a fraction in \(0, 1\)"),
        ("sklearn:iris", {"test_size": -0.5}, r"test_size must be a fraction in \(0, 1\)"),
        ("", {}, r"non-empty string"),
        ("dvc:@HEAD", {}, r"dvc source needs a path"),
    ],
)
def test_bad_sources_raise_dataset_error(
    tmp_path: Path, source: str, kwargs: dict[str, object], message: str
) -> None:
    files = {name: str(p) for name, p in _bad_files(tmp_path).items()}
    resolved = source.format(tmp=tmp_path, **files)
    with pytest.raises(DatasetError, match=message) as info:
        load_source(resolved, **kwargs)  # type: ignore[arg-type]
    text = str(info.value)
    assert "\n" not in text
    assert isinstance(info.value, FlowError)
    assert isinstance(info.value, ValueError)


def test_train_test_folders_must_match(tmp_path: Path) -> None:
    folder = tmp_path / "uneven"
    (folder / "train").mkdir(parents=True)
    np.save(folder / "train" / "x.npy", np.zeros((3, 2)))
    with pytest.raises(DatasetError, match="must hold both train/ and test/"):
        load_source(str(folder))
    (folder / "test").mkdir()
    np.save(folder / "test" / "x.npy", np.zeros((3, 5)))
    with pytest.raises(DatasetError, match="different shapes"):
        load_source(str(folder))
