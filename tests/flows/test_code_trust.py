"""Code runs only by its runner's explicit trust, never by data's say-so (DESIGN invariant 8).

A model artifact whose attributes name code the caller did not trust (``torch.hub:load`` of a
local ``hubconf.py``, ``os:system``, a module on ``PYTHONPATH``) is refused by evaluate, infer,
the federated client and flow, with one error line naming ``--trust-code``, and nothing is
imported (the marker the malicious module would write is absent, the module is not in
``sys.modules``, the home is unchanged); ``cidflow show`` never imports model code. Code
artifacts (a folder of ``.py`` files pinned by its CID) train, evaluate and infer when trusted
by ``--trust-code`` or the home's allow-list, and their CID is in every receipt and cache key.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import cli, ok, one_error, snapshot

from artifacts.canonical import canonical_json, loads_strict
from artifacts.store import ArtifactStore
from flows import pipelines
from flows.code import (
    CODE_ATTR,
    CODE_FORMAT,
    TRUST_FILE,
    CodeTrust,
    ModelRef,
    build_model,
    code_files,
    load_factory,
    load_model,
    materialise,
    put_code,
    read_trusted,
    trust_code,
    trusting,
    untrust_code,
)
from flows.errors import CodeArtifactError, ModelSpecError, UntrustedCodeError
from flows.federated.client import ModelSpec
from flows.federated.flow import client_round, init_model
from flows.receipts import load_receipt
from flows.tasks import Runtime, runtime
from flows.zoo import build_model as zoo_build
from registry.identity import Identity

FEATURES, CLASSES = 8, 3
EVIL = "cidflow_test_evilmod"  # a module on PYTHONPATH that writes a marker when imported


# -- fixtures --------------------------------------------------------------------------------


def _dataset(store: ArtifactStore) -> str:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((150, FEATURES)).astype("f4")
    y = (np.abs(x[:, 0]) * 2).astype("i8").clip(0, CLASSES - 1)
    arrays = {"train/x": x[:120], "train/y": y[:120], "test/x": x[120:], "test/y": y[120:]}
    return str(store.put_arrays(arrays, attrs={"schema": {"classes": CLASSES}}))


def _model_artifact(store: ArtifactStore, model: str, **extra: Any) -> str:
    """A model artifact (real weights of an mlp) whose spec names ``model``."""
    net = zoo_build("mlp", input_shape=(FEATURES,), n_classes=CLASSES)
    spec = {
        "model": model,
        "model_kwargs": {},
        "input_shape": [FEATURES],
        "n_classes": CLASSES,
        "seed": 0,
        **extra,
    }
    return str(store.put_state_dict(net.state_dict(), attrs={pipelines.MODEL_ATTR: spec}))


class Attack:
    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.home = tmp_path / "home"
        self.marks = tmp_path / "marks"
        self.marks.mkdir()
        evil = tmp_path / "evil"
        (evil / "hub").mkdir(parents=True)
        write = "import pathlib\npathlib.Path({!r}).write_text('ran')\n"
        (evil / f"{EVIL}.py").write_text(
            write.format(str(self.marks / "module")) + "def build(**kw):\n    return None\n"
        )
        (evil / "hub" / "hubconf.py").write_text(
            write.format(str(self.marks / "hubconf")) + "def evil(**kw):\n    return None\n"
        )
        monkeypatch.setenv(
            "PYTHONPATH", os.pathsep.join([str(evil), os.environ.get("PYTHONPATH", "")])
        )
        monkeypatch.syspath_prepend(str(evil))
        self.store = ArtifactStore(self.home)
        self.dataset = _dataset(self.store)
        self.models = {
            "torch.hub": _model_artifact(
                self.store,
                "torch.hub:load",
                model_kwargs={
                    "repo_or_dir": str(evil / "hub"),
                    "model": "evil",
                    "source": "local",
                    "trust_repo": True,
                },
            ),
            "os.system": _model_artifact(
                self.store, "os:system", model_kwargs={"command": f"touch {self.marks}/os"}
            ),
            "pythonpath": _model_artifact(self.store, f"{EVIL}:build"),
        }

    def nothing_ran(self) -> None:
        assert sorted(os.listdir(self.marks)) == []
        assert EVIL not in sys.modules
        assert not (self.home / "code").exists()


@pytest.fixture
def attack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Attack]:
    sys.modules.pop(EVIL, None)
    yield Attack(tmp_path, monkeypatch)
    sys.modules.pop(EVIL, None)


def _runtime(store: ArtifactStore, tmp_path: Path) -> Runtime:
    return Runtime(store, Identity.create(tmp_path / "keys"))


# -- attacks: nothing is imported --------------------------------------------------------------


@pytest.mark.parametrize("kind", ["torch.hub", "os.system", "pythonpath"])
def test_evaluate_infer_and_show_of_an_untrusted_model_import_nothing(
    attack: Attack, kind: str
) -> None:
    """The external contract: evaluate (and infer) of a model naming code outside the zoo
    that the caller did not trust exits non-zero, one line naming --trust-code, nothing
    imported, the home unchanged; show prints the spec and imports nothing."""
    model = attack.models[kind]
    other = _model_artifact(attack.store, "mlp")
    before = snapshot(attack.home)
    one_error(
        cli(attack.home, "evaluate", "--model", model, "--dataset", attack.dataset, "--json"),
        "--trust-code",
    )
    one_error(
        cli(attack.home, "infer", "--model", model, "--dataset", attack.dataset), "--trust-code"
    )
    # trusting something else does not help
    trusting_others = ["--trust-code", "othermod:build", "--trust-code", other]
    one_error(
        cli(
            attack.home, "evaluate", "--model", model, "--dataset", attack.dataset, *trusting_others
        ),
        "--trust-code",
    )
    shown = ok(cli(attack.home, "show", model, "--json"))
    assert shown["attrs"][pipelines.MODEL_ATTR]["model"] in {
        "torch.hub:load",
        "os:system",
        f"{EVIL}:build",
    }
    assert cli(attack.home, "show", model).returncode == 0
    assert snapshot(attack.home) == before
    attack.nothing_ran()


@pytest.mark.parametrize("kind", ["torch.hub", "os.system", "pythonpath"])
def test_the_tasks_themselves_refuse_untrusted_model_code(
    attack: Attack, tmp_path: Path, kind: str
) -> None:
    """Defence in depth: the task bodies, their cache keys, the flows' code lookup and the
    federated client refuse too (what a node runs, or a Python caller without a policy)."""
    model = attack.models[kind]
    with runtime(_runtime(attack.store, tmp_path)):
        for task in (pipelines.evaluate, pipelines.infer):
            assert set(task.cache_policy.modules({"model": model, "dataset": "x"})) == {
                "flows.training",
                "flows.zoo",
            }
            with pytest.raises(UntrustedCodeError, match="--trust-code"):
                task.fn(model=model, dataset=attack.dataset)
        with pytest.raises(UntrustedCodeError, match="--trust-code"):
            pipelines.model_code(model)
        with pytest.raises(UntrustedCodeError):  # the federated client on its global model
            client_round.fn(global_model=model, data=attack.dataset, round=1)
        with pytest.raises(UntrustedCodeError):
            client_round.fn(global_model=model, data=attack.dataset, round=1, epochs=0)
        # a policy trusting other code, or a node's policy, does not help either
        with trusting(CodeTrust.of(["othermod:build"])), pytest.raises(UntrustedCodeError):
            pipelines.evaluate.fn(model=model, dataset=attack.dataset)
        with trusting(CodeTrust.for_node()), pytest.raises(UntrustedCodeError):
            pipelines.infer.fn(model=model, dataset=attack.dataset)
        with pytest.raises(UntrustedCodeError):  # what a node calls, with its allow-list
            load_model(attack.store, model, trust=CodeTrust.for_node())
    attack.nothing_ran()


def test_local_code_is_built_only_when_named_and_never_on_a_node(
    attack: Attack, tmp_path: Path
) -> None:
    spec = f"{EVIL}:build"
    with runtime(_runtime(attack.store, tmp_path)):
        with pytest.raises(UntrustedCodeError, match=f"--trust-code {spec}"):
            ModelSpec(spec, (FEATURES,), CLASSES).build()
        with pytest.raises(UntrustedCodeError):
            init_model.fn(dataset=attack.dataset, model=spec, seed=0)
        with pytest.raises(UntrustedCodeError):
            pipelines.train.fn(dataset=attack.dataset, model=spec, epochs=1)
        assert pipelines.train.cache_policy.modules({"model": spec}) == [
            "flows.training",
            "flows.zoo",
        ]
        node = CodeTrust.for_node(["bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"])
        with pytest.raises(UntrustedCodeError, match="never builds"):
            node.check(ModelRef(spec))
        with pytest.raises(ValueError, match="node"):
            node.trusting(spec)
        with pytest.raises(UntrustedCodeError):
            build_model(spec, input_shape=(FEATURES,), n_classes=CLASSES, trust=node)
        with pytest.raises(UntrustedCodeError):  # the zoo never imports a module by itself
            zoo_build(spec, input_shape=(FEATURES,), n_classes=CLASSES)
    attack.nothing_ran()


# -- code artifacts ------------------------------------------------------------------------------


def _code_folder(root: Path, answer: int = 1) -> Path:
    """A code folder: ``mymod.build`` (with a relative import) and a sub-package."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "helpers.py").write_text(f"ANSWER = {answer}\n")
    (root / "mymod.py").write_text(
        "import torch\n"
        "from .helpers import ANSWER\n\n"
        "def build(input_shape, n_classes, width=16):\n"
        "    net = torch.nn.Sequential(\n"
        "        torch.nn.Flatten(), torch.nn.Linear(input_shape[0], width),\n"
        "        torch.nn.ReLU(), torch.nn.Linear(width, n_classes))\n"
        "    net.answer = ANSWER\n"
        "    return net\n"
    )
    (root / "pkg").mkdir(exist_ok=True)
    (root / "pkg" / "__init__.py").write_text("from .layers import make\n")
    (root / "pkg" / "layers.py").write_text(
        "from ..helpers import ANSWER\n\ndef make(**kw):\n    return ANSWER\n"
    )
    return root


def test_code_artifacts_load_under_their_own_package(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "home")
    one = put_code(store, _code_folder(tmp_path / "one", 1))
    two = put_code(store, _code_folder(tmp_path / "two", 2))
    assert one != two
    assert put_code(store, tmp_path / "one") == one  # the same bytes, the same CID
    assert code_files(store, one) == ["helpers.py", "mymod.py", "pkg/__init__.py", "pkg/layers.py"]
    kw: dict[str, Any] = {"input_shape": (FEATURES,), "n_classes": CLASSES, "store": store}
    with pytest.raises(UntrustedCodeError, match=f"--trust-code {one}"):
        build_model("mymod:build", code=one, **kw)
    assert not (store.home / "code").exists()
    trust = CodeTrust.of([one, two])
    a = build_model("mymod:build", code=one, trust=trust, **kw)
    b = build_model("mymod:build", code=two, trust=trust, width=4, **kw)
    assert (a.answer, b.answer) == (1, 2)  # same module name, two packages in sys.modules
    assert b[1].out_features == 4
    assert load_factory(store.home / "code" / one, "pkg", "make")() == 1
    # a node never imports user code into its own processes, allowed or not: only the sandbox
    # runs it (tests/node_agent/test_node_trust.py)
    net = build_model("mymod:build", code=one, trust=trust, **kw)
    spec = {
        "model": "mymod:build",
        "code": one,
        "input_shape": [FEATURES],
        "n_classes": CLASSES,
        "model_kwargs": {},
    }
    cid = str(store.put_state_dict(net.state_dict(), attrs={pipelines.MODEL_ATTR: spec}))
    assert load_model(store, cid, trust=trust).answer == 1
    with pytest.raises(UntrustedCodeError, match="runs on a node only in the sandbox"):
        load_model(store, cid, trust=CodeTrust.for_node([one]))
    with pytest.raises(UntrustedCodeError, match=f"not allowed on this node.*node allow {two}"):
        build_model("mymod:build", code=two, trust=CodeTrust.for_node([one]), **kw)
    assert load_factory(store.home / "code" / two, "pkg.layers", "make")() == 2
    folder = materialise(store, one)
    assert folder == store.home / "code" / one
    assert sorted(p.name for p in folder.rglob("*") if p.is_file()) == [
        "__init__.py",
        "helpers.py",
        "layers.py",
        "mymod.py",
    ]  # no bytecode
    assert not [p for p in (store.home / "code").iterdir() if p.name.startswith(".")]
    # a modified copy under HOME/code is replaced by the artifact's bytes
    (folder / "helpers.py").write_text("ANSWER = 666\n")
    (folder / "extra.py").write_text("\n")
    assert materialise(store, one) == folder
    assert (folder / "helpers.py").read_text() == "ANSWER = 1\n"
    assert not (folder / "extra.py").exists()


def test_code_folders_hold_only_python_files(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "home")
    before = snapshot(store.home)
    link = _code_folder(tmp_path / "link")
    (link / "secret.py").symlink_to(tmp_path / "link" / "helpers.py")
    with pytest.raises(CodeArtifactError, match="symbolic link"):
        put_code(store, link)
    dirlink = _code_folder(tmp_path / "dirlink")
    (dirlink / "elsewhere").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(CodeArtifactError, match="symbolic link"):
        put_code(store, dirlink)
    data = _code_folder(tmp_path / "data")
    (data / "native.so").write_bytes(b"\x7fELF")
    with pytest.raises(CodeArtifactError, match="not a Python source file"):
        put_code(store, data)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CodeArtifactError, match=r"no \.py file"):
        put_code(store, tmp_path / "empty")
    assert snapshot(store.home) == before
    # __pycache__ is left out, not refused
    cached = _code_folder(tmp_path / "cached")
    (cached / "__pycache__").mkdir()
    (cached / "__pycache__" / "mymod.cpython-311.pyc").write_bytes(b"\0")
    assert "__pycache__/mymod.cpython-311.pyc" not in code_files(store, put_code(store, cached))


def _forge_path(store: ArtifactStore, cid: str, target: str, path: str) -> str:
    """A copy of files artifact ``cid`` whose file ``target`` claims to live at ``path``."""
    from artifacts.writers import FILE_ATTR

    root = loads_strict(store.blobs.get(cid))
    for entry in root["tables"][""]["entries"]:
        if not entry[0].endswith("zarr.json"):
            continue
        doc = loads_strict(store.blobs.get(entry[1]))
        attributes = doc.get("attributes") or {}
        if attributes.get(FILE_ATTR, {}).get("path") == target:
            attributes[FILE_ATTR]["path"] = path
            body = json.dumps(doc).encode()
            entry[1], entry[2] = str(store.blobs.put(body)), len(body)
    return str(store.blobs.put(canonical_json(root), codec="json"))


def test_forged_code_artifacts_are_refused(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "home")
    dataset = _dataset(store)
    good = put_code(store, _code_folder(tmp_path / "code"))
    traversal = _forge_path(store, good, "helpers.py", "../../evil.py")
    # a files artifact that claims to be code but holds a file that is not Python
    folder = _code_folder(tmp_path / "mixed")
    (folder / "run.sh").write_text("touch pwned\n")
    claims = {CODE_ATTR: {"format": CODE_FORMAT, "files": ["helpers.py", "mymod.py"]}}
    lying = str(store.put_path(folder, attrs=claims))
    before = snapshot(store.home)
    for cid, why in [
        (dataset, "not a code artifact"),
        (traversal, "evil.py"),
        (lying, "malformed"),
    ]:
        with pytest.raises(CodeArtifactError, match=why):
            code_files(store, cid)
        with pytest.raises(CodeArtifactError, match=why):
            materialise(store, cid)
        with pytest.raises(CodeArtifactError, match=why):
            build_model(
                "mymod:build",
                code=cid,
                input_shape=(FEATURES,),
                n_classes=CLASSES,
                store=store,
                trust=CodeTrust.of([cid]),
            )
    assert not (tmp_path / "evil.py").exists()
    assert not (store.home / "evil.py").exists()
    assert not (store.home / "code").exists()  # refused before anything was exported
    assert snapshot(store.home) == before
    with pytest.raises(ModelSpecError, match="not a CID"):
        build_model(
            "mymod:build", code="../../etc", input_shape=(FEATURES,), n_classes=CLASSES, store=store
        )


def test_the_homes_allow_list(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = ArtifactStore(home)
    cid = put_code(store, _code_folder(tmp_path / "code"))
    assert read_trusted(home) == frozenset()
    assert trust_code(home, cid) is True
    assert trust_code(home, cid) is False
    assert read_trusted(home) == {cid}
    assert stat.S_IMODE((home / TRUST_FILE).stat().st_mode) == 0o600
    assert CodeTrust.for_home(home).allows(ModelRef("mymod:build", cid))
    assert not CodeTrust.for_home(home).allows(ModelRef("mymod:build"))
    assert untrust_code(home, cid) is True
    assert untrust_code(home, cid) is False
    assert read_trusted(home) == frozenset()
    trust_code(home, cid)
    os.chmod(home / TRUST_FILE, 0o666)  # writable by others: not an allow-list to believe
    with pytest.raises(UntrustedCodeError, match="0600"):
        read_trusted(home)
    os.chmod(home / TRUST_FILE, 0o600)
    (home / TRUST_FILE).write_text('{"format": "cidflow/trusted-code@1", "cids": ["nope"]}')
    with pytest.raises(UntrustedCodeError, match="malformed"):
        read_trusted(home)
    with pytest.raises(ModelSpecError, match="neither"):
        CodeTrust.of(["not a cid"])


# -- through the command line ----------------------------------------------------------------

RUNNER = (
    "import runpy, sys\n"
    "try:\n"
    "    runpy.run_module('cidflow', run_name='__main__', alter_sys=True)\n"
    "finally:\n"
    "    sys.stderr.write('IMPORTED prefect=%s\\n' % ('prefect' in sys.modules))\n"
)


def _fast(home: Path, *args: str) -> tuple[dict[str, Any], bool]:
    """(JSON output, whether Prefect was imported) of a CLI run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "CIDFLOW_"))}
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    cmd = [sys.executable, "-c", RUNNER, "--home", str(home), *args, "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    out = ok(proc)
    return out, "prefect=True" in proc.stderr.splitlines()[-1]


def _receipt(home: Path, cid: str) -> dict[str, Any]:
    return dict(load_receipt(ArtifactStore(home), cid).body)


@pytest.mark.xdist_group("prefect")
@pytest.mark.slow
def test_code_artifacts_train_evaluate_infer_through_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    data = _dataset(ArtifactStore(home))
    folder = _code_folder(tmp_path / "code")
    added = ok(cli(home, "code", "add", str(folder), "--json"))
    code = added["cid"]
    assert added["files"] == ["helpers.py", "mymod.py", "pkg/__init__.py", "pkg/layers.py"]
    assert code in ArtifactStore(home).pins()

    train = ["train", "--dataset", data, "--code", code, "--model", "mymod:build", "--epochs", "1"]
    first = ok(cli(home, *train, "--json"))
    assert first["cached"] is False
    model = first["model"]
    spec = ArtifactStore(home).open_artifact(model).attrs[pipelines.MODEL_ATTR]
    assert (spec["model"], spec["code"]) == ("mymod:build", code)
    body = _receipt(home, first["receipt"])
    assert body["parameters"]["code"] == code
    assert code in body["inputs"]

    # not trusted: refused before anything runs, the home unchanged
    before = snapshot(home)
    one_error(
        cli(home, "evaluate", "--model", model, "--dataset", data, "--json"), f"--trust-code {code}"
    )
    one_error(cli(home, "infer", "--model", model, "--dataset", data), "--trust-code")
    assert snapshot(home) == before

    ev = ok(
        cli(home, "evaluate", "--model", model, "--dataset", data, "--trust-code", code, "--json")
    )
    assert ev["cached"] is False
    body = _receipt(home, ev["receipt"])
    assert body["parameters"]["code"] == code
    assert code in body["inputs"]

    # the home's allow-list: a cached rerun through the fast path (the same key), then infer
    assert ok(cli(home, "code", "trust", code, "--json"))["changed"] is True
    assert ok(cli(home, "code", "list", "--json")) == [{"cid": code, "present": True}]
    again, prefect = _fast(home, "evaluate", "--model", model, "--dataset", data)
    assert again == {**ev, "cached": True}
    assert not prefect, "the CLI's fast path computed the key the task computed"
    inf = ok(cli(home, "infer", "--model", model, "--dataset", data, "--json"))
    body = _receipt(home, inf["receipt"])
    assert body["parameters"]["code"] == code
    assert code in body["inputs"]
    assert ok(cli(home, "code", "untrust", code, "--json"))["changed"] is True
    assert ok(cli(home, "code", "list", "--json")) == []
    one_error(cli(home, "evaluate", "--model", model, "--dataset", data), "--trust-code")

    # one byte of the code changed: a new code CID, and a miss
    (folder / "helpers.py").write_text("ANSWER = 2\n")
    changed = ok(cli(home, "code", "add", str(folder), "--json"))["cid"]
    assert changed != code
    train2 = [*train[:4], changed, *train[5:]]
    second = ok(cli(home, *train2, "--json"))
    assert second["cached"] is False
    assert second["model"] != model
    assert ok(cli(home, *train, "--json"))["cached"] is True

    # a local module named on the command line still trains (and nowhere else)
    local = tmp_path / "local"
    local.mkdir()
    (local / "localnets.py").write_text(
        (folder / "mymod.py").read_text().replace("from .helpers import ANSWER", "ANSWER = 3")
    )
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(local), os.environ.get("PYTHONPATH", "")])
    )
    mine = ok(
        cli(
            home,
            "train",
            "--dataset",
            data,
            "--model",
            "localnets:build",
            "--epochs",
            "1",
            "--json",
        )
    )
    one_error(
        cli(home, "evaluate", "--model", mine["model"], "--dataset", data),
        "--trust-code localnets:build",
    )
    ok(
        cli(
            home,
            "evaluate",
            "--model",
            mine["model"],
            "--dataset",
            data,
            "--trust-code",
            "localnets:build",
            "--json",
        )
    )

    # forged and malformed code: one clear line
    one_error(
        cli(home, "train", "--dataset", data, "--code", data, "--model", "m:build"),
        "not a code artifact",
    )
    one_error(cli(home, "train", "--dataset", data, "--code", code), "module:factory")
    (folder / "link.py").symlink_to(folder / "mymod.py")
    one_error(cli(home, "code", "add", str(folder)), "symbolic link")
    one_error(cli(home, "code", "trust", data), "not a code artifact")
    one_error(
        cli(home, "evaluate", "--model", model, "--dataset", data, "--trust-code", "nonsense"),
        "--trust-code",
    )


@pytest.mark.xdist_group("prefect")
@pytest.mark.slow
def test_federated_training_with_a_code_artifact(tmp_path: Path) -> None:
    home = tmp_path / "home"
    data = _dataset(ArtifactStore(home))
    code = ok(cli(home, "code", "add", str(_code_folder(tmp_path / "code")), "--json"))["cid"]
    args = [
        "federated",
        "--dataset",
        data,
        "--clients",
        "2",
        "--partition",
        "iid",
        "--rounds",
        "1",
        "--model",
        "mymod:build",
    ]
    out = ok(cli(home, *args, "--code", code, "--json"))
    spec = ArtifactStore(home).open_artifact(out["model"]).attrs[pipelines.MODEL_ATTR]
    assert (spec["model"], spec["code"]) == ("mymod:build", code)
