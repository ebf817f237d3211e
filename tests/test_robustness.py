"""Bad input, numerical failure and unsafe files: clear errors, no lost work."""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_runner import CONFIG

import learnreg
from learnreg import config, registry
from learnreg.core.objectives import Objective, TaskLoss
from learnreg.core.outer import OuterOptimizer
from learnreg.errors import CheckpointError, ConfigError, LearnregError, NumericalError, ShapeError
from learnreg.losses import CrossEntropy, LabelSmoothing, NeuralLoss, SparseLSR
from learnreg.tracking.checkpoint import load_checkpoint, save_checkpoint


def test_outer_optimizer_skips_non_finite_steps_and_gives_up_after_n():
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    outer = OuterOptimizer([w], torch.optim.SGD([w], lr=0.1), max_bad_steps=4)
    w.grad = torch.tensor([1.0, 1.0])
    assert outer.step(0.5) == {
        "meta_loss": 0.5,
        "grad_norm": pytest.approx(math.sqrt(2)),
        "skipped": 0.0,
    }
    good = w.detach().clone()
    for bad in range(1, 3):
        w.grad = torch.tensor([float("nan"), 1.0])
        assert outer.step(0.5)["skipped"] == 1.0 and outer.bad_steps == bad
        assert torch.equal(w.detach(), good) and w.grad is None
    w.grad = torch.tensor([1.0, 1.0])
    assert outer.step(float("inf"))["skipped"] == 1.0  # a non-finite meta-loss is refused too
    assert torch.equal(w.detach(), good)
    w.grad = torch.tensor([float("inf"), 0.0])
    with pytest.raises(NumericalError, match="4 consecutive meta-steps skipped"):
        outer.step(0.5)
    assert torch.equal(w.detach(), good)


def test_outer_optimizer_rolls_back_parameters_that_overflow():
    w = torch.nn.Parameter(torch.tensor([3e38]))
    outer = OuterOptimizer([w], torch.optim.SGD([w], lr=1.0))
    w.grad = torch.tensor([-3e38])
    assert outer.step(1.0)["skipped"] == 1.0
    assert w.item() == pytest.approx(3e38)


def test_outer_optimizer_clips_the_global_norm():
    w = torch.nn.Parameter(torch.zeros(2))
    outer = OuterOptimizer([w], torch.optim.SGD([w], lr=1.0), clip_grad_norm=1.0)
    w.grad = torch.tensor([3.0, 4.0])
    assert outer.step(0.0)["grad_norm"] == pytest.approx(5.0)
    torch.testing.assert_close(w.detach(), torch.tensor([-0.6, -0.8]))


@registry.register("objective", "test_nan_after_two")
class NanAfterTwo(Objective):
    """Test objective: the task loss for two calls, NaN afterwards."""

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.inner = TaskLoss()

    def forward(self, model, state, batch, task):
        self.calls += 1
        value = self.inner(model, state, batch, task)
        return value if self.calls <= 2 else value * float("nan")


def test_diverging_meta_training_stops_with_a_valid_checkpoint(tmp_path):
    cfg = {**CONFIG, "objective": {"_component_": "test_nan_after_two"}, "max_bad_steps": 4}
    with pytest.raises(NumericalError, match="4 consecutive meta-steps skipped"):
        learnreg.run(cfg, out=tmp_path, progress=False)
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert state["trainer"]["meta_step"] == 5  # two good steps, then three skipped ones
    assert all(torch.isfinite(t).all() for t in state["trainer"]["biases"].values())
    skipped = [
        line
        for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
        if '"meta/skipped": 1.0' in line
    ]
    assert len(skipped) == 3


def test_a_diverging_meta_test_run_is_reported_not_averaged(tmp_path):
    cfg = {**CONFIG, "meta_steps": 2, "optimizer": {"_component_": "sgd", "lr": 1e6}}
    with pytest.warns(UserWarning, match="diverged at inner step"):
        summary = learnreg.run(cfg, out=tmp_path, progress=False)
    # Cross-entropy at lr 1e6 overflows; the learned loss saturates instead (finite).
    assert summary["baseline"]["diverged"] == 2 and summary["diverged"] == 0
    assert all(seed["baseline"]["diverged_at"] == 5 for seed in summary["per_seed"])
    assert "WARNING: 2 baseline run(s) diverged" in learnreg.runner.format_summary(summary)
    text = (tmp_path / "summary.json").read_text()
    assert "NaN" not in text and json.loads(text)["per_seed"][0]["baseline"]["loss"] == "nan"


def _write_malicious_checkpoint(path, marker):
    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    buffer = io.BytesIO()
    torch.save({"format": "learnreg-checkpoint", "version": 1, "state": Exploit()}, buffer)
    path.write_bytes(buffer.getvalue())


def test_a_checkpoint_carrying_a_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    _write_malicious_checkpoint(tmp_path / "evil.pt", marker)
    with pytest.raises(CheckpointError, match="not plain tensor data"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_corrupt_truncated_and_incompatible_checkpoints(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"x": torch.ones(3), "n": 1})
    assert load_checkpoint(path)["n"] == 1
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)
    buffer = io.BytesIO()
    torch.save(
        {"format": "learnreg-checkpoint", "version": 99, "learnreg": "9.0", "state": {}}, buffer
    )
    path.write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError, match="format 99"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_resuming_from_a_corrupt_checkpoint_names_the_file(tmp_path):
    cfg = {**CONFIG, "meta_steps": 4, "meta_test": {"steps": 5, "seeds": 1}}
    learnreg.run(cfg, out=tmp_path, progress=False)
    (tmp_path / "summary.json").unlink()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="last.pt is corrupt"):
        learnreg.run(cfg, out=tmp_path, progress=False)


def test_label_and_shape_mismatches_are_clear():
    with pytest.raises(ShapeError, match=r"logits \(N, C\) and labels \(N,\)"):
        CrossEntropy()(torch.randn(4, 3), torch.randint(0, 3, (5,)))
    with pytest.raises(ShapeError, match=r"labels must lie in \[0, 3\)"):
        NeuralLoss("classification", 10)(torch.randn(4, 3), torch.tensor([0, 1, 2, 3]))


def _cli(*args, env=None):
    cmd = [sys.executable, "-m", "learnreg.cli", *args]
    return subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300
    )


def test_cli_user_errors_exit_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: {_component_: digitz}\nmodel: {_component_: mlp}\n")
    result = _cli("run", str(bad), "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "Did you mean 'digits'" in result.stderr and "Traceback" not in result.stderr
    debug = _cli("--debug", "run", str(bad), "--out", str(tmp_path / "run2"))
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    missing = _cli(
        "run",
        "fmnist",
        "task=fashion_mnist",
        "task.path=/nonexistent",
        "model=mlp",
        "--out",
        str(tmp_path / "r3"),
    )
    assert (
        missing.returncode == 2
        and "not found" in missing.stderr
        and "Traceback" not in missing.stderr
    )


LOSSES = [
    lambda c: CrossEntropy(),
    lambda c: LabelSmoothing(0.1),
    lambda c: SparseLSR(0.1),
    lambda c: NeuralLoss("classification", c),
    lambda c: NeuralLoss("classification", c, activation="smooth_leaky_relu"),
]


@settings(max_examples=40, deadline=None)
@given(
    make=st.sampled_from(LOSSES),
    n=st.integers(1, 4),
    c=st.integers(1, 5),
    scale=st.sampled_from([0.0, 1.0, 1e2, 1e4]),
    seed=st.integers(0, 2**16),
)
def test_losses_stay_finite_on_extreme_logits(make, n, c, scale, seed):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, c, generator=g).sign() * scale).requires_grad_()
    target = torch.randint(0, c, (n,), generator=g)
    value = make(c)(logits, target)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()


@settings(max_examples=60, deadline=None)
@given(
    key=st.sampled_from(
        [
            "meta_steps",
            "seed",
            "optimizer.lr",
            "meta_test.steps",
            "loss.hidden",
            "device",
            "meta_grad_clip",
            "loss",
        ]
    ),
    value=st.one_of(
        st.integers(-5, 5),
        st.floats(allow_nan=True),
        st.text(max_size=8),
        st.lists(st.integers(), max_size=3),
        st.none(),
    ),
)
def test_any_override_is_accepted_or_rejected_with_a_config_error(key, value):
    override = f"{key}={value!r}" if not isinstance(value, str) else f"{key}={value}"
    base = {
        "task": {"_component_": "digits"},
        "model": {"_component_": "mlp"},
        "loss": {"_component_": "neural"},
    }
    try:
        config.load(base, [override])
    except LearnregError as exc:
        assert isinstance(exc, ConfigError) and str(exc)


def test_pickle_module_is_not_used_for_biases(tmp_path):
    from learnreg import losses

    path = losses.save(NeuralLoss("classification", 3), tmp_path / "loss")
    assert pickle.PickleError  # the bias files are JSON + safetensors: no pickle anywhere
    assert path.read_text().lstrip().startswith("{")
