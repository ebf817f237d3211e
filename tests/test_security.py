"""The allow-list: a config or an exported bias cannot name code to run.

Every refusal is checked for its absence of side effects: the marker file a payload
would create does not exist, and a module the name points into is never imported.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import safetensors.torch
import torch

from learnreg import cli, config, registry
from learnreg.core.bias import Bias
from learnreg.errors import CheckpointError, ConfigError
from learnreg.losses import NeuralLoss, neural
from learnreg.tracking.export import load_bias, read_safetensors_header, save_bias

BASE = {"task": {"_component_": "diabetes"}, "model": {"_component_": "mlp", "hidden": [4]}}

#: Callables a file must never reach: they run commands, unpickle, write files, eval.
DANGEROUS = [
    "torch.utils.collect_env.run",
    "torch.load",
    "torch.hub.load",
    "os.system",
    "subprocess.Popen",
    "builtins.eval",
    "learnreg.tracking.atomic.atomic_write_bytes",
    "torch.nn.functional.relu",  # a function below a listed module
    "torch.nn.factory_kwargs",  # a function in a listed module
    "torch.optim.swap_in_optimizer_params_and_state",
    "torch.nn.Parameter",  # a class of a listed module, but not a Module
    "torch.nn.modules.module.Module",  # the right base, but not a listed module
    "torch.nn._reduction",
]


@pytest.mark.parametrize("name", DANGEROUS)
@pytest.mark.parametrize("section", ["loss", "model", "meta_optimizer", "meta_lr_schedule"])
def test_config_cannot_name_a_function_or_an_unlisted_class(name, section):
    with pytest.raises(ConfigError, match="not allowed|unknown"):
        config.load({**BASE, section: {"_component_": name}})


def test_collect_env_run_from_a_config_creates_no_file(tmp_path):
    marker = tmp_path / "PWNED"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(
        "task: {_component_: diabetes}\nmodel: {_component_: mlp}\n"
        f"loss: {{_component_: torch.utils.collect_env.run, command: 'touch {marker}'}}\n"
    )
    result = _cli("run", str(cfg), "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "not allowed" in result.stderr and "Never a function" in result.stderr
    assert not marker.exists() and not (tmp_path / "run").exists()


@pytest.fixture
def evil_module(tmp_path, monkeypatch):
    """A module on sys.path that creates a marker file when imported."""
    marker = tmp_path / "IMPORTED"
    (tmp_path / "evil_payload.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nimport torch\n"
        "class Loss(torch.nn.Module):\n    pass\n"
        "def run(command='x'):\n    open(%r, 'w').close()\n" % str(tmp_path / "CALLED")
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("evil_payload", None)
    yield marker
    sys.modules.pop("evil_payload", None)


def test_a_name_outside_the_allow_list_is_never_imported(evil_module):
    for spec in (
        {"_component_": "evil_payload.run"},
        {"_component_": "evil_payload.Loss"},
    ):
        with pytest.raises(ConfigError, match="not allowed"):
            config.load({**BASE, "loss": spec})
    nested = {"_component_": "evolution", "searcher": {"_component_": "evil_payload.run"}}
    with pytest.raises(ConfigError, match=r"estimator\.searcher: .*not allowed"):
        config.load({**BASE, "estimator": nested})
    assert "evil_payload" not in sys.modules and not evil_module.exists()


def test_allow_module_admits_classes_never_functions(evil_module, monkeypatch):
    monkeypatch.setattr(registry, "USER_MODULES", {"evil_payload"})
    assert registry.lookup("loss", "evil_payload.Loss").__name__ == "Loss"
    with pytest.raises(ConfigError, match="not a class deriving from"):
        registry.lookup("loss", "evil_payload.run")
    assert not (evil_module.parent / "CALLED").exists()


def test_allowed_names_resolve():
    assert registry.lookup("meta_optimizer", "torch.optim.RMSprop") is torch.optim.RMSprop
    assert registry.lookup("meta_lr_schedule", "torch.optim.lr_scheduler.StepLR") is (
        torch.optim.lr_scheduler.StepLR
    )
    assert registry.lookup("model", "torch.nn.Tanh") is torch.nn.Tanh
    # a registered component, by name or by its class path
    assert registry.lookup("loss", "neural") is NeuralLoss
    assert registry.lookup("loss", "learnreg.losses.neural.NeuralLoss") is NeuralLoss
    with pytest.raises(ConfigError, match="not allowed"):  # right module, wrong kind
        registry.lookup("meta_optimizer", "torch.nn.Tanh")


class CountingLoss(Bias):
    """A user's learned loss, registered in code (path (c) of the allow-list)."""

    role = "loss"
    built = 0

    def __init__(self, width: int = 3):
        super().__init__()
        type(self).built += 1
        self.weight = torch.nn.Parameter(torch.arange(float(width)))

    def forward(self, logits, targets):
        return (logits.sum(-1) * self.weight.sum()).mean()


@pytest.fixture
def counting_loss(monkeypatch):
    monkeypatch.setitem(registry._TABLE["loss"], "test_counting", None)  # removed afterwards
    registry.register("loss", "test_counting")(CountingLoss)
    CountingLoss.built = 0
    return CountingLoss


def test_a_user_registered_bias_round_trips(tmp_path, counting_loss):
    original = counting_loss(width=4)
    with torch.no_grad():
        original.weight.mul_(3)
    save_bias(original, tmp_path / "loss")
    assert json.loads((tmp_path / "loss.json").read_text())["component"] == "test_counting"
    loaded = load_bias(tmp_path / "loss", role="loss")
    assert torch.equal(loaded.weight, original.weight)
    assert config.load({**BASE, "loss": {"_component_": "test_counting", "width": 2}})


def _bias_files(tmp_path, **changes):
    """A valid exported NeuralLoss whose description is then changed."""
    save_bias(NeuralLoss("classification", 3, hidden=[4]), tmp_path / "loss")
    doc = json.loads((tmp_path / "loss.json").read_text())
    doc.update(changes)
    (tmp_path / "loss.json").write_text(json.dumps(doc))
    return tmp_path / "loss"


def test_describe_refuses_a_bias_naming_a_function_and_runs_nothing(tmp_path):
    marker = tmp_path / "PWNED"
    (tmp_path / "loss.json").write_text(
        json.dumps(
            {
                "format": "learnreg-bias",
                "version": 1,
                "role": "loss",
                "component": "torch.utils.collect_env.run",
                "args": {"command": f"touch {marker}"},
            }
        )
    )
    (tmp_path / "loss.safetensors").write_bytes(b"")
    result = _cli("describe", str(tmp_path / "loss"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and "not allowed" in result.stderr
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="not allowed"):
        load_bias(tmp_path / "loss")
    assert not marker.exists()


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"component": "torch.nn.Tanh"}, "not a learnreg loss bias class"),
        ({"component": "sgd"}, "unknown loss"),  # a registered name of another role
        ({"component": "diabetes"}, "unknown loss"),  # a registered function (a task)
        ({"role": "task"}, "role must be one of"),
        ({"args": {"hidden": "many"}}, "must be list or tuple"),
        ({"args": {"width": 3}}, "has no argument 'width'"),
        ({"args": ["x"]}, "args must be a mapping"),
        ({"surprise": 1}, "unknown key 'surprise'"),
        ({"version": True}, "format version"),
    ],
)
def test_bias_descriptions_are_validated_before_anything_is_built(
    tmp_path, monkeypatch, changes, message
):
    path = _bias_files(tmp_path, **changes)
    built = []
    activation = neural._activation
    monkeypatch.setattr(neural, "_activation", lambda *a: built.append(a) or activation(*a))
    with pytest.raises(CheckpointError, match=message):
        load_bias(path)
    assert not built
    _bias_files(tmp_path)
    load_bias(path)
    assert built  # the counter counts


def _rewrite_header(path, edit):
    blob = path.read_bytes()
    length = int.from_bytes(blob[:8], "little")
    header = edit(json.loads(blob[8 : 8 + length]))
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + blob[8 + length :])


def test_safetensors_headers_are_checked_before_the_component_is_built(tmp_path, counting_loss):
    save_bias(counting_loss(width=4), tmp_path / "loss")
    counting_loss.built = 0
    tensors = tmp_path / "loss.safetensors"
    assert read_safetensors_header(tensors) == {"weight": (4,)}
    good = tensors.read_bytes()
    corruptions = {
        "no header": lambda: tensors.write_bytes(good[:5]),
        "bytes in a": lambda: tensors.write_bytes((10**12).to_bytes(8, "little") + good[8:]),
        "header is not JSON": lambda: tensors.write_bytes(
            (4).to_bytes(8, "little") + b"{{{{" + good[8:]
        ),
        "does not fit the file": lambda: tensors.write_bytes(good[:-4]),
        "malformed entry": lambda: _rewrite_header(
            tensors, lambda h: {**h, "weight": {**h["weight"], "shape": [-4]}}
        ),
    }
    for message, corrupt in corruptions.items():
        tensors.write_bytes(good)
        corrupt()
        with pytest.raises(CheckpointError, match=message):
            load_bias(tmp_path / "loss")
        assert counting_loss.built == 0, message
    # well-formed, but the tensors do not fit the description: refused before a real build
    tensors.write_bytes(safetensors.torch.save({"weight": torch.zeros(5)}))
    with pytest.raises(CheckpointError, match="wrong shapes"):
        load_bias(tmp_path / "loss")
    tensors.write_bytes(safetensors.torch.save({"other": torch.zeros(4)}))
    with pytest.raises(CheckpointError, match="missing \\['weight'\\]"):
        load_bias(tmp_path / "loss")
    assert counting_loss.built == 2  # the two shape probes, on the meta device only


def _cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "WANDB_MODE": "disabled"}
    return subprocess.run(
        [sys.executable, "-m", "learnreg.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )


def _cifar_folder(root, batch=None):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        content = batch or {
            "batch_label": name,
            "labels": rng.integers(0, 10, 4).tolist(),
            "data": rng.integers(0, 255, (4, 3072), dtype=np.uint8),
            "filenames": [f"{name}_{i}.png" for i in range(4)],
        }
        with (folder / name).open("wb") as f:
            pickle.dump(content, f)
    return folder


def test_cifar10_batches_are_read_without_running_code(tmp_path, monkeypatch):
    from learnreg.data import vision
    from learnreg.errors import DataError

    monkeypatch.setenv("LEARNREG_DATA", str(tmp_path / "good"))
    folder = _cifar_folder(tmp_path / "good")
    task = vision.cifar10(val_size=4)
    assert task.train.x.shape == (16, 3, 32, 32) and len(task.test) == 4
    with (folder / "test_batch").open("rb") as f:
        raw = pickle.load(f)
    image = raw["data"][0].reshape(3, 32, 32).transpose(1, 2, 0)  # channels last on disk
    assert np.array_equal(vision.cifar10_arrays(tmp_path / "good", False)[2][0], image)

    marker = tmp_path / "PWNED"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    monkeypatch.setenv("LEARNREG_DATA", str(tmp_path / "evil"))
    _cifar_folder(tmp_path / "evil", batch={"data": Exploit(), "labels": [0]})
    with pytest.raises(DataError, match="names posix.system|names os.system"):
        vision.cifar10(val_size=1)
    assert not marker.exists()


def _marker_module(tmp_path, name):
    """A module on sys.path that leaves a marker file when it is imported."""
    marker = tmp_path / f"{name}.imported"
    (tmp_path / f"{name}.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
    )
    return marker


def test_a_config_file_cannot_import_an_untrusted_module(tmp_path, monkeypatch):
    from learnreg.imports import trusted

    configlib = config

    marker = _marker_module(tmp_path, "stranger_mod")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = tmp_path / "received.yaml"
    cfg.write_text("task: {_component_: digits}\nimports: [stranger_mod]\n")
    with pytest.raises(ConfigError, match=r"--import stranger_mod"):
        configlib.load(cfg)
    assert not marker.exists() and "stranger_mod" not in trusted()
    # Named by the user, it is imported and remembered; the same file then loads.
    configlib.load(cfg, imports=["stranger_mod"])
    assert marker.exists() and "stranger_mod" in trusted()
    from learnreg.imports import trust_file

    assert "stranger_mod" in trust_file().read_text().split()


def test_a_received_run_directory_cannot_import_an_installed_module(tmp_path, monkeypatch):
    from learnreg.imports import import_recorded

    marker = _marker_module(tmp_path, "installed_but_untrusted")
    monkeypatch.syspath_prepend(str(tmp_path))
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("imports: [installed_but_untrusted]\n")
    with pytest.raises(ConfigError, match="imports only modules you named yourself"):
        import_recorded(run)
    assert not marker.exists()
    code = cli.main(["describe", str(run)])
    assert code == 2 and not marker.exists()
