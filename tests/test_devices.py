"""The `device` setting: runs move between CPU and GPU through their checkpoints, and the
GPU computes what the CPU computes. The GPU tests skip on machines without CUDA."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import Interrupt, interrupted_at, tiny_task
from safetensors.torch import load_file
from torch import nn

import learnreg
from learnreg.estimators import TruncatedUnroll
from learnreg.optim.catalog import CATALOG

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")

CONFIG = {
    "method": "adalfl",
    "task": {"_component_": "digits", "batch_size": 32},
    "model": {"_component_": "mlp", "hidden": [16]},
    "loss": {"_component_": "neural", "hidden": [8, 8], "activation": "smooth_leaky_relu"},
    "optimizer": {"_component_": "sgd", "lr": 0.05},
    "estimator": {"_component_": "truncated_unroll", "window": 1, "horizon": 1},
    "meta_steps": 8,
    "checkpoint_every": 2,
    "meta_test": {"steps": 20, "seeds": 1},
    "logger": {"backends": []},
}


def _interrupted_then_resumed(tmp_path, first: str, second: str) -> dict:
    """Meta-trains on ``first`` until meta-step 5, then resumes the run on ``second``."""
    with interrupted_at(TruncatedUnroll, "estimate", 5), pytest.raises(Interrupt):
        learnreg.run({**CONFIG, "device": first}, out=tmp_path, progress=False)
    return learnreg.run({**CONFIG, "device": second}, out=tmp_path, progress=False)


def _learned(run_dir):
    return load_file(str(run_dir / "learned" / "loss.safetensors"))


def test_a_run_resumes_under_a_different_device_setting(tmp_path, monkeypatch):
    """`device` is the one setting a resumed run may change (the rest must match)."""
    # `auto` is $LEARNREG_DEVICE, else CUDA when present: pin it to the CPU, so that both
    # halves run the same arithmetic (the CPU<->GPU case is the test below).
    monkeypatch.setenv("LEARNREG_DEVICE", "cpu")
    reference = learnreg.run({**CONFIG, "device": "cpu"}, out=tmp_path / "ref", progress=False)
    resumed = _interrupted_then_resumed(tmp_path / "run", "cpu", "auto")
    assert resumed["test"] == reference["test"]
    for name, value in _learned(tmp_path / "ref").items():
        assert torch.equal(_learned(tmp_path / "run")[name], value)


@needs_cuda
@pytest.mark.parametrize("first,second", [("cuda", "cpu"), ("cpu", "cuda")])
def test_a_run_checkpointed_on_one_device_resumes_on_the_other(tmp_path, first, second):
    reference = learnreg.run({**CONFIG, "device": first}, out=tmp_path / "ref", progress=False)
    resumed = _interrupted_then_resumed(tmp_path / "run", first, second)
    assert resumed["device"].startswith(second)
    # Same arithmetic on two devices: equal up to float32 rounding.
    for name, value in _learned(tmp_path / "ref").items():
        torch.testing.assert_close(_learned(tmp_path / "run")[name], value, rtol=1e-4, atol=1e-5)
    assert abs(resumed["test"]["loss"] - reference["test"]["loss"]) < 1e-3


@needs_cuda
def test_meta_gradient_on_cuda_equals_cpu():
    """The exact one-step hypergradient (fast path) on the GPU, against the CPU in float64."""
    from learnreg.core.bias import Biases
    from learnreg.core.objectives import TaskLoss
    from learnreg.core.outer import OuterOptimizer
    from learnreg.core.task import SingleTask
    from learnreg.estimators import MetaContext
    from learnreg.inits import RandomInit
    from learnreg.losses import NeuralLoss
    from learnreg.optimizers import SGD

    grads = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        loss = NeuralLoss("classification", 3, hidden=(5, 5), activation="smooth_leaky_relu")
        biases = Biases(loss.double().to(device), SGD(lr=0.3, momentum=0.9), RandomInit())
        params = biases.meta_parameters()
        outer = OuterOptimizer(params, torch.optim.SGD(params, lr=0.0))
        ctx = MetaContext(
            SingleTask(tiny_task()), biases, TaskLoss(), outer, 0, torch.device(device)
        )
        run = ctx.new_run("meta_train", 0)
        for _ in range(3):
            outer.zero_grad()
            TruncatedUnroll(window=1, horizon=None).unroll(ctx, run)
        grads[device] = [p.grad.cpu() for p in params]
    for a, b in zip(grads["cpu"], grads["cuda"]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def _closure(opt, net, x, y):
    def closure():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        return loss

    return closure


@needs_cuda
@pytest.mark.parametrize("name", sorted(CATALOG))
def test_every_optimizer_steps_the_same_on_cuda(name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    batches = [(torch.randn(12, 5).double(), torch.randint(0, 3, (12,))) for _ in range(3)]
    results = []
    for device in ("cpu", "cuda"):
        net = copy.deepcopy(model).to(device)
        opt = CATALOG[name].build(net.parameters(), 0.05)
        for x, y in batches:
            opt.step(_closure(opt, net, x.to(device), y.to(device)))
        results.append([p.detach().cpu() for p in net.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
