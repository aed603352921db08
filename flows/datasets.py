"""Dataset sources: turn a source string into named numpy arrays plus a schema, and store them.

Plain Python (no Prefect): the publishing flow wraps :func:`put_dataset`.

Sources understood by :func:`load_source`:

``sklearn:NAME``
    A dataset shipped inside scikit-learn (``digits``, ``iris``, ``wine``, ``breast_cancer``).
    Nothing that downloads (``fetch_*``) is allowed.
``PATH.npy``
    One array, stored as ``x`` (unsupervised).
``PATH.npz``
    Its arrays; ``x`` and ``y`` keep their names (both present: supervised).
``FOLDER``
    ``x.npy`` (and optionally ``y.npy``), or ``train/`` and ``test/`` subfolders holding them
    (an already-made split, kept as is).
``PATH.csv`` / ``PATH.parquet``
    Numeric feature columns; the label column is ``label=`` or else the first of ``label``,
    ``target``, ``y`` present; without one the data are unsupervised (only ``x``). Non-numeric
    label values become sorted class ids, the names go in ``schema["class_names"]``.
``hf:REPO_ID[@REVISION][:FILE]``
    A Hugging Face *dataset* repo from the hub cache (``HF_HUB_OFFLINE=1`` reads only the
    cache): ``FILE`` inside it (``.npy``/``.npz``/``.csv``/``.parquet``), parsed as above; without
    ``FILE`` the repo must hold exactly one such file.
``dvc:PATH@REV``
    ``PATH`` as it was at git revision ``REV`` of the DVC/git repository in the current directory
    (read with ``dvc.api.open``), then parsed by its suffix as above.

Supervised data hold ``x`` (float32, at least 2-D) and ``y`` (int64 class ids). With
``test_size`` they are split deterministically by ``seed`` (stratified when every class allows
it) into ``train/x``, ``train/y``, ``test/x``, ``test/y``; ``test_size=None`` keeps ``x``/``y``.
Every bad source raises :class:`~flows.errors.DatasetError` with a one-line message.
"""

from __future__ import annotations

import importlib
import io
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from artifacts.cid import CID
from artifacts.store import ArtifactStore
from flows.errors import DatasetError, one_line

__all__ = ["SKLEARN_DATASETS", "Dataset", "load_source", "put_dataset"]

#: scikit-learn datasets that ship inside the package (no network), by source name.
SKLEARN_DATASETS: tuple[str, ...] = ("breast_cancer", "digits", "iris", "wine")

#: Label column names tried, in order, when ``label`` is not given for CSV/Parquet.
LABEL_COLUMNS: tuple[str, ...] = ("label", "target", "y")

_FILE_KINDS = {".npy": "npy", ".npz": "npz", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")

Array = np.ndarray[Any, Any]


@dataclass(frozen=True)
class Dataset:
    """Named arrays ready for :meth:`ArtifactStore.put_arrays`, and their JSON schema.

    ``schema`` holds ``source`` (kind and name, never an absolute path), ``supervised``, ``rows``
    (total over splits), ``arrays`` (shape and dtype per array), ``split``, and for supervised
    data ``classes`` (sorted class ids), ``num_classes`` and, when known, ``class_names``.
    """

    arrays: dict[str, Array]
    schema: dict[str, Any]


@dataclass
class _Raw:
    """What a reader returns before validation and splitting."""

    source: dict[str, Any]
    x: Array | None = None
    y: Array | None = None
    extra: dict[str, Array] | None = None
    given_split: dict[str, tuple[Array, Array | None]] | None = None
    info: dict[str, Any] | None = None
    class_names: list[str] | None = None


# --------------------------------------------------------------------------- public API


def load_source(
    source: str,
    *,
    test_size: float | None = 0.2,
    seed: int = 0,
    label: str | None = None,
    revision: str | None = None,
) -> Dataset:
    """Read ``source`` (see the module docstring) into a :class:`Dataset`.

    Raises :class:`DatasetError` for an unknown scheme or sklearn name, a missing or unreadable
    file, empty data, mismatched ``x``/``y`` lengths, non-numeric feature columns, or a
    ``test_size`` outside (0, 1).
    """
    if not isinstance(source, str) or not source.strip():
        raise DatasetError("dataset source must be a non-empty string")
    _check_test_size(test_size)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DatasetError(f"seed must be an integer, got {seed!r}")
    raw = _read(source, label=label, revision=revision)
    return _build(raw, test_size=test_size, seed=seed)


def put_dataset(store: ArtifactStore, source: str, **load_kwargs: Any) -> CID:
    """Load ``source`` and store it as an arrays artifact whose attrs hold the schema.

    The same source and options give the same CID: the attrs carry no time, host or absolute
    path.
    """
    ds = load_source(source, **load_kwargs)
    attrs = {"dataset": ds.schema["source"], "schema": ds.schema}
    return store.put_arrays(ds.arrays, attrs=attrs, source=source)


# --------------------------------------------------------------------------- dispatch


def _read(source: str, *, label: str | None, revision: str | None) -> _Raw:
    if source.startswith("sklearn:"):
        return _read_sklearn(source[len("sklearn:") :])
    if source.startswith("dvc:"):
        return _read_dvc(source[len("dvc:") :], label=label, revision=revision)
    if source.startswith("hf:"):
        return _read_hf(source[len("hf:") :], label=label, revision=revision)
    match = _SCHEME.match(source)
    # One-letter "schemes" are drive letters; an existing path wins over a scheme-like prefix.
    if match and len(match.group(1)) > 1 and not os.path.exists(source):
        raise DatasetError(
            f"unknown dataset scheme {match.group(1)!r} in {source!r} "
            "(expected sklearn:NAME, hf:REPO_ID, dvc:PATH@REV or a local path)"
        )
    path = Path(source).expanduser()
    if not path.exists():
        raise DatasetError(f"dataset source not found: {source}")
    if path.is_dir():
        return _read_folder(path)
    kind = _file_kind(path.name)
    with _reading(source):
        data = path.read_bytes()
    return _parse_bytes(data, kind, {"kind": kind, "name": path.name}, label=label, where=source)


_HF_SPEC = re.compile(r"^(?P<repo>[^@:]+)(?:@(?P<rev>[^:]+))?(?::(?P<file>.+))?$")


def _read_hf(spec: str, *, label: str | None, revision: str | None) -> _Raw:
    from flows.errors import HubError
    from flows.hf import resolve_hub_source

    match = _HF_SPEC.match(spec)
    if not match:
        raise DatasetError(f"hf:{spec} is not hf:REPO_ID[@REVISION][:FILE]")
    repo, rev, name = match.group("repo"), match.group("rev") or revision, match.group("file")
    try:
        folder = resolve_hub_source(repo, rev, repo_type="dataset")
    except HubError as exc:
        raise DatasetError(str(exc)) from None
    if name is None:
        found = sorted(
            p.relative_to(folder.path).as_posix() for p in folder.path.rglob("*")
            if Path(p.name).suffix.lower() in _FILE_KINDS and not p.name.startswith(".")
        )  # fmt: skip
        if len(found) != 1:
            listing = ", ".join(found[:10]) or "none"
            raise DatasetError(
                f"hf:{spec}: name the data file as hf:{repo}:FILE (data files: {listing})"
            )
        name = found[0]
    path = folder.path / name
    if ".." in Path(name).parts or not path.is_file():
        raise DatasetError(f"hf:{spec}: no file {name!r} in the repo")
    kind = _file_kind(name)
    with _reading(f"hf:{spec}"):
        data = path.read_bytes()
    info = {"kind": "hf", "name": repo, "file": name, "commit": folder.commit}
    return _parse_bytes(data, kind, info, label=label, where=f"hf:{spec}")


def _file_kind(name: str) -> str:
    suffix = Path(name).suffix.lower()
    if suffix not in _FILE_KINDS:
        known = ", ".join(sorted(_FILE_KINDS))
        raise DatasetError(f"unsupported dataset file type {suffix or name!r} (expected {known})")
    return _FILE_KINDS[suffix]


class _reading:
    """Context manager turning read/parse failures into one-line DatasetErrors."""

    def __init__(self, where: str) -> None:
        self.where = where

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if isinstance(exc, Exception) and not isinstance(exc, DatasetError):
            raise DatasetError(f"cannot read {self.where}: {one_line(exc)}") from exc


def _parse_bytes(
    data: bytes, kind: str, source: dict[str, Any], *, label: str | None, where: str
) -> _Raw:
    if kind == "npy":
        with _reading(where):
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        return _Raw(source=source, x=_numeric(arr, "x", where))
    if kind == "npz":
        return _from_npz(data, source, where)
    return _from_table(data, kind, source, label=label, where=where)


# --------------------------------------------------------------------------- readers


def _read_sklearn(name: str) -> _Raw:
    if name.startswith("fetch_"):
        raise DatasetError(
            f"sklearn:{name} downloads data from the network; only datasets shipped inside "
            f"scikit-learn are allowed: {', '.join(SKLEARN_DATASETS)}"
        )
    short = name.removeprefix("load_")
    if short not in SKLEARN_DATASETS:
        raise DatasetError(
            f"unknown scikit-learn dataset {name!r} (expected one of {', '.join(SKLEARN_DATASETS)})"
        )
    import sklearn.datasets as skd

    loader: Callable[..., Any] = getattr(skd, f"load_{short}")
    bunch = loader()
    names = [str(n) for n in getattr(bunch, "target_names", [])]
    features = [str(f) for f in getattr(bunch, "feature_names", [])]
    return _Raw(
        source={"kind": "sklearn", "name": short},
        x=np.asarray(bunch.data),
        y=np.asarray(bunch.target),
        class_names=names or None,
        info={"features": features} if features else None,
    )


def _from_npz(data: bytes, source: dict[str, Any], where: str) -> _Raw:
    with _reading(where), np.load(io.BytesIO(data), allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in sorted(npz.files)}
    if not arrays:
        raise DatasetError(f"dataset {where} is empty: the .npz holds no arrays")
    raw = _Raw(source=source)
    if "y" in arrays and "x" not in arrays:
        raise DatasetError(f"dataset {where} has labels 'y' but no features 'x'")
    if "x" in arrays:
        raw.x = _numeric(arrays.pop("x"), "x", where)
    if "y" in arrays:
        raw.y, raw.class_names = _labels(arrays.pop("y"), where)
    raw.extra = {name: _numeric(value, name, where) for name, value in arrays.items()}
    return raw


def _read_folder(path: Path) -> _Raw:
    where = str(path)
    source = {"kind": "folder", "name": path.name}
    train, test = path / "train", path / "test"
    if train.is_dir() or test.is_dir():
        if not (train.is_dir() and test.is_dir()):
            raise DatasetError(f"dataset folder {where} must hold both train/ and test/ folders")
        parts: dict[str, tuple[Array, Array | None]] = {}
        for part, sub in (("train", train), ("test", test)):
            x, y = _folder_xy(sub, f"{where}/{part}")
            parts[part] = (x, y)
        has_y = [y is not None for _, y in parts.values()]
        if any(has_y) and not all(has_y):
            raise DatasetError(f"dataset folder {where}: y.npy is in only one of train/ and test/")
        return _Raw(source=source, given_split=parts)
    x, y = _folder_xy(path, where)
    return _Raw(source=source, x=x, y=y)


def _folder_xy(folder: Path, where: str) -> tuple[Array, Array | None]:
    xf, yf = folder / "x.npy", folder / "y.npy"
    if not xf.is_file():
        raise DatasetError(f"dataset folder {where} holds no x.npy (nor train/ and test/)")
    with _reading(str(xf)):
        x = np.load(xf, allow_pickle=False)
    y = None
    if yf.is_file():
        with _reading(str(yf)):
            y = np.load(yf, allow_pickle=False)
    return _numeric(x, "x", where), y


def _from_table(
    data: bytes, kind: str, source: dict[str, Any], *, label: str | None, where: str
) -> _Raw:
    pd: Any = importlib.import_module("pandas")  # no type stubs installed

    with _reading(where):
        if kind == "csv":
            frame = pd.read_csv(io.BytesIO(data))
        else:
            frame = pd.read_parquet(io.BytesIO(data))
    columns = [str(c) for c in frame.columns]
    frame.columns = pd.Index(columns)
    if label is not None and label not in columns:
        raise DatasetError(f"label column {label!r} not in {where} (columns: {', '.join(columns)})")
    if label is None:
        label = next((c for c in LABEL_COLUMNS if c in columns), None)
    features = [c for c in columns if c != label]
    if not features:
        raise DatasetError(f"dataset {where} has no feature columns")
    if len(frame) == 0:
        raise DatasetError(f"dataset {where} is empty: no rows")
    bad = [
        c
        for c in features
        if not (pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c]))
    ]
    if bad:
        raise DatasetError(f"non-numeric feature columns in {where}: {', '.join(bad)}")
    x = frame[features].to_numpy(dtype=np.float64)
    info: dict[str, Any] = {"features": features}
    raw = _Raw(source=source, x=x, info=info)
    if label is not None:
        info["label"] = label
        column = frame[label]
        if column.isna().any():
            raise DatasetError(f"label column {label!r} in {where} has missing values")
        values = column.to_numpy()
        if not (pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column)):
            values = values.astype(str)
        raw.y, raw.class_names = _labels(values, where)
    return raw


def _read_dvc(spec: str, *, label: str | None, revision: str | None) -> _Raw:
    path, sep, rev = spec.rpartition("@")
    if not sep:
        path, rev = spec, ""
    if not path:
        raise DatasetError(f"dvc source needs a path: dvc:PATH@REV, got dvc:{spec}")
    if sep and not rev:
        raise DatasetError(f"dvc source has an empty revision after '@': dvc:{spec}")
    if rev and revision is not None and rev != revision:
        raise DatasetError(f"dvc:{spec} names revision {rev!r} but revision={revision!r}")
    rev_or_none = rev or revision
    kind = _file_kind(path)
    where = f"dvc:{path}@{rev_or_none}" if rev_or_none else f"dvc:{path}"
    try:
        import dvc.api

        with dvc.api.open(path, repo=os.getcwd(), rev=rev_or_none, mode="rb") as handle:
            data = handle.read()
    except Exception as exc:  # dvc raises many unrelated types: unknown rev, no repo, missing path
        raise DatasetError(f"cannot read {where}: {one_line(exc)}") from exc
    source: dict[str, Any] = {"kind": "dvc", "name": path, "format": kind}
    if rev_or_none:
        source["rev"] = rev_or_none
    return _parse_bytes(data, kind, source, label=label, where=where)


# --------------------------------------------------------------------------- validation


def _check_test_size(test_size: float | None) -> None:
    if test_size is None:
        return
    ok = isinstance(test_size, int | float) and not isinstance(test_size, bool)
    if not ok or not 0.0 < float(test_size) < 1.0:
        raise DatasetError(f"test_size must be a fraction in (0, 1) or None, got {test_size!r}")


def _numeric(arr: Array, name: str, where: str) -> Array:
    arr = np.asarray(arr)
    if arr.dtype.kind not in "biuf" or arr.dtype.fields:
        raise DatasetError(f"array {name!r} in {where} is not numeric (dtype {arr.dtype})")
    return arr


def _labels(values: Array, where: str) -> tuple[Array, list[str] | None]:
    """Class ids as int64, and the class names when the labels were not numbers."""
    values = np.asarray(values)
    if values.ndim != 1:
        values = values.reshape(len(values), -1) if values.ndim else values.reshape(1)
        if values.ndim != 1 and values.shape[1] != 1:
            raise DatasetError(f"labels in {where} must be one class per row, got {values.shape}")
        values = values.reshape(-1)
    if values.dtype.kind in "USO":
        names = sorted({str(v) for v in values})
        index = {n: i for i, n in enumerate(names)}
        return np.array([index[str(v)] for v in values], dtype=np.int64), names
    if values.dtype.kind == "b":
        return values.astype(np.int64), None
    if values.dtype.kind in "iu":
        out = values.astype(np.int64)
    elif values.dtype.kind == "f":
        if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
            raise DatasetError(f"labels in {where} must be integer class ids, got fractions")
        out = values.astype(np.int64)
    else:
        raise DatasetError(f"labels in {where} have unsupported dtype {values.dtype}")
    if out.size and out.min() < 0:
        raise DatasetError(f"labels in {where} must be class ids >= 0, got {int(out.min())}")
    return out, None


def _features(x: Array, where: str) -> Array:
    if x.ndim == 0:
        raise DatasetError(f"features in {where} must have one row per example, got a scalar")
    if x.shape[0] == 0:
        raise DatasetError(f"dataset {where} is empty: no rows")
    if x.ndim == 1:
        x = x.reshape(-1, 1)
    return np.ascontiguousarray(x, dtype=np.float32)


# --------------------------------------------------------------------------- assembly


def _build(raw: _Raw, *, test_size: float | None, seed: int) -> Dataset:
    where = _where(raw.source)
    arrays: dict[str, Array] = {}
    split: dict[str, Any]
    y_all: list[Array] = []
    if raw.given_split is not None:
        shapes = set()
        parts = raw.given_split
        given_y = [y for _, y in parts.values() if y is not None]
        joint, cut = np.zeros(0, dtype=np.int64), 0
        if given_y:
            # One label mapping for both parts (string labels must get the same ids in each).
            joint, raw.class_names = _labels(
                np.concatenate([np.asarray(y).reshape(len(y), -1) for y in given_y]), where
            )
            cut = len(given_y[0])
        for part, (x, y) in parts.items():
            xx = _features(x, f"{where}/{part}")
            shapes.add(xx.shape[1:])
            arrays[f"{part}/x"] = xx
            if y is not None:
                yy = joint[:cut] if part == "train" else joint[cut:]
                _same_length(xx, yy, f"{where}/{part}")
                arrays[f"{part}/y"] = yy
                y_all.append(yy)
        if len(shapes) != 1:
            raise DatasetError(f"train and test features in {where} have different shapes")
        split = {
            "method": "given",
            "train_rows": int(arrays["train/x"].shape[0]),
            "test_rows": int(arrays["test/x"].shape[0]),
        }
    else:
        if raw.x is None:
            extra = raw.extra or {}
            if not extra or all(a.size == 0 for a in extra.values()):
                raise DatasetError(f"dataset {where} is empty")
            arrays.update(extra)
            return Dataset(arrays, _schema(raw, arrays, [], {"method": "none"}))
        x = _features(raw.x, where)
        if raw.y is None:
            arrays["x"] = x
            split = {"method": "none"}
        else:
            y, _ = _labels(raw.y, where)
            _same_length(x, y, where)
            y_all.append(y)
            if test_size is None:
                arrays["x"], arrays["y"] = x, y
                split = {"method": "none"}
            else:
                split = _split(x, y, test_size, seed, where, arrays)
        arrays.update(raw.extra or {})
    return Dataset(arrays, _schema(raw, arrays, y_all, split))


def _same_length(x: Array, y: Array, where: str) -> None:
    if len(x) != len(y):
        raise DatasetError(f"x and y lengths differ in {where}: {len(x)} rows vs {len(y)} labels")


def _split(
    x: Array, y: Array, test_size: float, seed: int, where: str, out: dict[str, Array]
) -> dict[str, Any]:
    from sklearn.model_selection import train_test_split

    index = np.arange(len(y))
    counts = np.unique(y, return_counts=True)[1]
    n_test = int(np.ceil(test_size * len(y)))
    stratify = bool(counts.min() >= 2 and len(y) - n_test >= len(counts) and n_test >= len(counts))
    try:
        train_i, test_i = train_test_split(
            index, test_size=test_size, random_state=seed, shuffle=True,
            stratify=y if stratify else None,
        )  # fmt: skip
    except ValueError as exc:
        raise DatasetError(
            f"cannot split {where} with test_size={test_size}: {one_line(exc)}"
        ) from exc
    if len(train_i) == 0 or len(test_i) == 0:
        raise DatasetError(f"cannot split {where}: too few rows ({len(y)}) for test_size")
    train_i, test_i = np.sort(train_i), np.sort(test_i)
    out["train/x"], out["train/y"] = x[train_i], y[train_i]
    out["test/x"], out["test/y"] = x[test_i], y[test_i]
    return {
        "method": "stratified" if stratify else "random",
        "test_size": float(test_size),
        "seed": int(seed),
        "train_rows": len(train_i),
        "test_rows": len(test_i),
    }


def _where(source: Mapping[str, Any]) -> str:
    return f"{source['kind']}:{source['name']}"


def _schema(
    raw: _Raw, arrays: Mapping[str, Array], ys: list[Array], split: dict[str, Any]
) -> dict[str, Any]:
    rows = sum(
        int(a.shape[0]) for name, a in arrays.items() if name.rsplit("/", 1)[-1] == "x" and a.ndim
    )
    schema: dict[str, Any] = {
        "source": dict(raw.source),
        "supervised": bool(ys),
        "rows": rows,
        "arrays": {
            name: {"shape": [int(d) for d in a.shape], "dtype": str(a.dtype)}
            for name, a in sorted(arrays.items())
        },
        "split": split,
    }
    if ys:
        labels = np.concatenate(ys)
        classes = [int(c) for c in np.unique(labels)]
        schema["classes"] = classes
        schema["num_classes"] = max(classes) + 1 if classes else 0
        if raw.class_names:
            schema["class_names"] = list(raw.class_names)
    x = arrays.get("x", arrays.get("train/x"))
    if x is not None:
        schema["features_shape"] = [int(d) for d in x.shape[1:]]
    schema.update(raw.info or {})
    return schema
