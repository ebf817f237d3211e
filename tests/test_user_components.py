"""User components from the CLI (``--import``, ``imports:``), tasks from tensors, and the
first-hour output fixes (progress lines, describe, list, sweep and eval tables)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from sklearn import datasets

import learnreg
from learnreg import cli
from learnreg.data import sklearn_task, tensor_task
from learnreg.errors import ConfigError, DataError
from learnreg.eval.report import format_eval
from learnreg.losses.neural import NeuralLoss
from learnreg.sweep import table_cell
from learnreg.tracking.export import save_bias

ROOT = Path(__file__).resolve().parent.parent

MODULE = '''
import math

import torch
import torch.nn.functional as F
from sklearn.datasets import make_moons
from torch import nn

from learnreg.data import tensor_task
from learnreg.registry import register


@register("task", "moons")
def moons(batch_size: int = 32, noise: float = 0.2, split_seed: int = 0):
    """Two interleaving half-moons (scikit-learn), 400 points."""
    x, y = make_moons(400, noise=noise, random_state=0)
    return tensor_task(torch.tensor(x), torch.tensor(y), batch_size=batch_size, name="moons")


@register("loss", "tempered_ce")
class TemperedCE(nn.Module):
    """Cross-entropy of logits scaled by a learned temperature: a plain nn.Module."""

    def __init__(self, num_classes: int = 2, temperature: float = 1.0):
        super().__init__()
        self.num_classes = num_classes
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))

    def forward(self, pred, target):
        return F.cross_entropy(pred * self.log_temperature.exp(), target)
'''

CONFIG = """
method: ml3
task: {_component_: moons, batch_size: 32}
model: {_component_: mlp, hidden: [16]}
loss: {_component_: tempered_ce, temperature: 2.0}
optimizer: {_component_: sgd, lr: 0.1}
estimator: {_component_: truncated_unroll, window: 1, horizon: 1}
meta_steps: 6
meta_test: {steps: 20, seeds: 2, eval_every: 10}
logger: {backends: [console], every: 3}
"""


def _cli(args, cwd, pythonpath=()):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *map(str, pythonpath)])}
    return subprocess.run(
        [sys.executable, "-m", "learnreg.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,  # not a terminal: progress must come as lines
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def user_run(tmp_path_factory):
    """A fresh subprocess run of a config naming a task and a loss from ``--import``."""
    home = tmp_path_factory.mktemp("user")
    (home / "mymodule.py").write_text(MODULE)
    (home / "my.yaml").write_text(CONFIG)
    (home / "elsewhere").mkdir()
    done = _cli(["run", "my.yaml", "--import", "mymodule", "--out", "run"], cwd=home)
    assert done.returncode == 0, done.stderr
    return home, done


def test_a_run_with_import_records_the_module_and_exports_the_plain_loss(user_run):
    home, done = user_run
    run = home / "run"
    assert "imports:\n- mymodule\n" in (run / "config.yaml").read_text()
    doc = json.loads((run / "learned" / "loss.json").read_text())
    assert doc["component"] == "tempered_ce"
    assert doc["args"] == {"temperature": 2.0, "num_classes": 2}
    tensors = safetensors.torch.load_file(str(run / "learned" / "loss.safetensors"))
    assert set(tensors) == {"log_temperature"}
    assert float(tensors["log_temperature"]) != pytest.approx(math.log(2.0), abs=1e-9)


def test_progress_lines_appear_without_a_terminal(user_run):
    _, done = user_run
    lines = done.stderr.splitlines()
    # Progress lines (the meta-training probe lines start alike but carry no timing).
    meta = [line for line in lines if line.startswith("[meta_step=") and "elapsed" in line]
    assert [re.search(r"meta_step=(\d+)", line).group(1) for line in meta] == ["3", "6"]
    assert "ETA" in meta[-1]
    tests = [line for line in lines if line.startswith("[meta-test ")]
    expected = [
        f"[meta-test {tag} seed={seed} step={step}/20]"
        for seed in (0, 1)
        for tag in ("learned", "baseline")
        for step in (10, 20)
    ]
    assert [line.split("]")[0] + "]" for line in tests] == expected
    assert all("test_accuracy=" in line and "ETA" in line for line in tests[1:])


def test_describe_and_eval_rebuild_the_recorded_components(user_run):
    home, _ = user_run
    elsewhere = home / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    described = _cli(["describe", str(home / "run")], cwd=elsewhere, pythonpath=[home])
    assert described.returncode == 0, described.stderr
    assert described.stdout.startswith("loss: tempered_ce (TemperedCE(temperature=2.0")
    # The rebuilt loss's value at p_target = 0.99 (2 classes) with the learned temperature.
    log_t = safetensors.torch.load_file(str(home / "run" / "learned" / "loss.safetensors"))
    logits = torch.log(torch.tensor([[0.99, 0.01]], dtype=torch.float64)).float()
    value = F.cross_entropy(logits * log_t["log_temperature"].exp(), torch.tensor([0]))
    shown = float(re.search(r"0\.99: ([-0-9.e+]+)", described.stdout).group(1))
    assert shown == pytest.approx(float(value), rel=1e-3)

    evaluated = _cli(
        ["eval", str(home / "run"), "--radii", "0.01", "--pga-steps", "2", "--max-examples", "64"],
        cwd=elsewhere,
        pythonpath=[home],
    )
    assert evaluated.returncode == 0, evaluated.stderr
    summary = json.loads((home / "run" / "summary.json").read_text())
    # eval rebuilt the custom task and model: its test accuracy is the run's own.
    # `eval` evaluates the same-settings baseline's saved models (the tuned ones are not kept).
    same = summary["baselines"]["same_settings"]
    for tag, block in (("learned", summary), ("baseline", same)):
        got = summary["eval"][tag]["mean"]["test_accuracy"]
        assert got == pytest.approx(block["test"]["accuracy"], abs=1e-6)


def test_rerunning_without_import_reuses_the_recorded_modules(user_run):
    home, _ = user_run
    before = (home / "run" / "summary.json").read_text()
    again = _cli(
        ["run", str(home / "my.yaml"), "--out", str(home / "run")],
        cwd=home / "elsewhere",
        pythonpath=[home],
    )
    assert again.returncode == 0, again.stderr  # not "unknown task 'moons'", not "different config"
    assert (home / "run" / "summary.json").read_text() == before


def test_a_recorded_module_that_is_not_importable_is_one_error_line(user_run):
    home, _ = user_run
    elsewhere = home / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    done = _cli(["describe", str(home / "run")], cwd=elsewhere)
    assert done.returncode == 2
    assert done.stderr.startswith("error: cannot import module 'mymodule' recorded in")
    assert "PYTHONPATH" in done.stderr


def test_a_run_directory_cannot_bring_its_own_code(user_run, tmp_path):
    home, _ = user_run
    run = tmp_path / "received"
    run.mkdir()
    for name in ("config.yaml", "summary.json"):
        (run / name).write_text((home / "run" / name).read_text())
    (run / "mymodule.py").write_text("raise SystemExit('ran code from the run directory')\n")
    done = _cli(["describe", "."], cwd=run)  # `python -m` puts the working directory first
    assert done.returncode == 2, done.stderr
    assert "inside the run directory" in done.stderr and "ran code" not in done.stderr


def test_imports_must_be_module_names():
    with pytest.raises(ConfigError, match="not a module name"):
        learnreg.config.load({"task": "digits", "imports": ["./mymodule.py"]})


def test_the_different_config_refusal_names_the_keys(tmp_path):
    cfg = {
        "task": {"_component_": "digits"},
        "model": {"_component_": "mlp", "hidden": [4]},
        "loss": {"_component_": "neural", "hidden": [4]},
        "meta_steps": 1,
        "meta_test": {"steps": 2, "seeds": 1, "baseline": False},
        "logger": {"backends": []},
    }
    learnreg.run(cfg, out=tmp_path, progress=False)
    changed = {**cfg, "optimizer": {"_component_": "sgd", "lr": 0.5}, "threads": 1}
    with pytest.raises(ConfigError, match=r"\(optimizer\.lr differ\)"):
        learnreg.run(changed, out=tmp_path, progress=False)


@pytest.mark.parametrize("name", ["digits", "diabetes"])
def test_tensor_task_splits_and_standardises_like_sklearn_task(name):
    data = getattr(datasets, f"load_{name}")()
    y = torch.tensor(data.target) if name == "digits" else torch.tensor(data.target).double()
    ours = tensor_task(torch.tensor(data.data), y, name=name, split_seed=3, batch_size=16)
    reference = sklearn_task(name, split_seed=3, batch_size=16)
    assert ours.kind == reference.kind and ours.num_classes == reference.num_classes
    for split in ("train", "val", "test"):
        a, b = getattr(ours, split), getattr(reference, split)
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert ours.train.x.mean(0).abs().max() < 1e-5  # standardized with train statistics
    assert ours.test.x.mean(0).abs().max() > 1e-3  # ... only


def test_tensor_task_refuses_mismatched_rows_and_float_labels():
    with pytest.raises(DataError, match="one target per input row"):
        tensor_task(torch.zeros(10, 2), torch.zeros(9, dtype=torch.long))
    with pytest.raises(DataError, match="labels must be integers"):
        tensor_task(torch.zeros(10, 2), torch.zeros(10), kind="classification")


def test_describe_prints_a_neural_loss_readably(tmp_path, capsys):
    save_bias(NeuralLoss(num_classes=3, hidden=[4]), tmp_path / "loss")
    assert cli.main(["describe", str(tmp_path / "loss")]) == 0
    out = capsys.readouterr().out
    assert "Sequential(" not in out and "Linear(" not in out
    assert "neural" in out


def test_list_has_no_restructuredtext_markup(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "``" not in out and ":class:" not in out and ":func:" not in out
    assert cli.plain_text("Wraps :class:`~torch.optim.SGD` with ``lr``.") == "Wraps SGD with lr."


def test_sweep_seconds_to_a_tenth_and_eval_without_spread_for_one_seed():
    assert table_cell("seconds", 12.3456) == "12.3"
    assert table_cell("learned_accuracy", 0.912345) == "0.9123"
    one = {"learned": {"mean": {"test_loss": 0.5}, "std": {"test_loss": 0.0}, "per_seed": [{}]}}
    assert "±" not in format_eval(one)
    two = {
        "learned": {
            "mean": {"test_loss": 0.5},
            "ci95": {"test_loss": 0.9},  # Student-t half-width for n=2
            "per_seed": [{}, {}],
        }
    }
    assert "0.5 ± 0.9" in format_eval(two) and "(n=2)" in format_eval(two)


def test_threads_env_wins_over_the_config_and_zero_keeps_torchs_default(monkeypatch):
    from learnreg.threads import resolve_threads

    monkeypatch.delenv("LEARNREG_THREADS", raising=False)
    assert resolve_threads(None) == 1 and resolve_threads(3) == 3 and resolve_threads(0) is None
    monkeypatch.setenv("LEARNREG_THREADS", "2")
    assert resolve_threads(5) == 2
    monkeypatch.setenv("LEARNREG_THREADS", "many")
    with pytest.raises(ConfigError, match="LEARNREG_THREADS"):
        resolve_threads(None)
    with pytest.raises(ConfigError, match="threads must be"):
        learnreg.config.load({"task": "digits", "threads": -1})


def test_entry_point_modules_are_imported(tmp_path, monkeypatch):
    from importlib.metadata import EntryPoint

    from learnreg import imports, registry

    (tmp_path / "ep_components.py").write_text(
        "from learnreg.registry import register\n"
        "@register('loss', 'from_entry_point')\n"
        "def from_entry_point():\n    '''A loss from an installed package.'''\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    points = [EntryPoint("mine", "ep_components", imports.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(
        imports.importlib.metadata,
        "entry_points",
        lambda group: points if group == imports.ENTRY_POINT_GROUP else [],
    )
    assert imports.load_entry_points() == ["ep_components"]
    assert registry.lookup("loss", "from_entry_point").__name__ == "from_entry_point"
