"""Few-shot presets build, a short episodic run reports 95% confidence intervals over its
meta-test episodes, and the cosine meta-LR schedule follows its formula and resumes."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from conftest import FASHION_MNIST

from learnreg import config as configlib
from learnreg.core.outer import OuterOptimizer, cosine
from learnreg.experiment import build
from learnreg.runner import run

PRESETS = Path(__file__).resolve().parent.parent / "configs"
FEW_SHOT = sorted(
    p
    for folder in ("maml", "metasgd", "npbml", "npbml_gradprecond")
    for p in (PRESETS / folder).rglob("*.yaml")
)


@pytest.mark.parametrize("path", FEW_SHOT, ids=lambda p: str(p.relative_to(PRESETS)))
def test_preset_builds_its_roles(path):
    if "fmnist" in path.name and not os.path.isdir(FASHION_MNIST):
        pytest.skip("Fashion-MNIST not installed")
    cfg = configlib.load(path, ["device=cpu"])
    exp = build(cfg)
    biases = exp.trainer.biases
    paper = path.stem.endswith("_paper")
    # the papers: one inner step for Meta-SGD and for MAML's sine, five for MAML's images
    one_step = paper and (path.parent.name == "metasgd" or "sine" in path.stem)
    assert cfg["estimator"]["window"] == cfg["estimator"]["horizon"] == (1 if one_step else 5)
    assert type(biases.init).__name__ in ("LearnedInit", "FiLMInit")
    assert cfg["meta_test"]["seeds"] == 600
    assert (exp.trainer.ctx.outer.scheduler is not None) != paper  # the papers use none
    assert "NOT the" in cfg["description"] or paper or "npbml" in str(path)


def _one_step_by_hand(path):
    """The preset's first inner step from θ0 on one episode, and θ0 − 0.01·∇MSE by hand."""
    cfg = configlib.load(path, ["device=cpu"])
    exp = build(cfg)
    ctx = exp.trainer.ctx
    run_ = ctx.new_run("meta_train", 0)
    x, y = run_.task.train.x, run_.task.train.y
    theta0 = {k: v.detach() for k, v in run_.state.params.items()}
    grads = torch.func.grad(
        lambda p: torch.nn.functional.mse_loss(torch.func.functional_call(run_.model, p, (x,)), y)
    )(theta0)
    from learnreg.core.inner import inner_step

    with torch.no_grad():
        state, _ = inner_step(
            run_.model, run_.state, run_.next_train(), ctx.biases.loss, ctx.biases.optimizer
        )
    return cfg, theta0, grads, state


@pytest.mark.parametrize("method", ["maml", "metasgd"])
def test_paper_sine_preset_is_one_plain_sgd_step(method):
    """MAML / Meta-SGD sine as their papers set it: one step, lr 0.01, no momentum, meta-batch
    25, A ~ U[0.1, 5], φ ~ U[0, π]; the step is θ0 − 0.01·∇MSE (at Meta-SGD's initial rates)."""
    cfg, theta0, grads, state = _one_step_by_hand(PRESETS / method / "sine_paper.yaml")
    est = cfg["estimator"]
    assert (est["window"], est["horizon"], est["meta_batch"], cfg["meta_test"]["steps"]) == (
        1,
        1,
        25,
        1,
    )
    assert cfg["task"]["amplitude"] == [0.1, 5.0] and cfg["task"]["phase"] == [0.0, math.pi]
    assert cfg["optimizer"].get("momentum", 0.0) == 0.0 and not cfg["optimizer"].get("nesterov")
    for k in theta0:
        torch.testing.assert_close(
            state.params[k], theta0[k] - 0.01 * grads[k], rtol=1e-5, atol=1e-7
        )


def test_short_episodic_run_reports_confidence_intervals(tmp_path):
    summary = run(
        PRESETS / "npbml" / "digits_5w1s.yaml",
        [
            "meta_steps=3",
            "meta_test.seeds=12",
            "model.hidden=8",
            "logger.backends=[none]",
            "device=cpu",
        ],
        out=tmp_path,
        progress=False,
    )
    assert summary["meta_test_seeds"] == 12 and len(summary["per_seed"]) == 12
    accuracies = [s["learned"]["accuracy"] for s in summary["per_seed"]]
    mean = sum(accuracies) / 12
    std = math.sqrt(sum((a - mean) ** 2 for a in accuracies) / 11)
    assert summary["test"]["accuracy"] == pytest.approx(mean)
    t = 2.200985160091639  # Student t_{0.975} with 11 degrees of freedom
    assert summary["test_ci95"]["accuracy"] == pytest.approx(t * std / math.sqrt(12))
    assert (tmp_path / "learned" / "init.safetensors").is_file()
    assert (tmp_path / "learned" / "loss.json").is_file()  # NPBML's inner optimizer is fixed SGD


def test_cosine_schedule_follows_its_formula_and_resumes():
    total, lr = 10, 0.1

    def outer():
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=lr)
        return OuterOptimizer([p], opt, scheduler=cosine(opt, total, min_lr=0.01)), p

    a, p = outer()
    seen = []
    for _ in range(total):
        p.grad = torch.ones(1)
        seen.append(a.step(1.0)["meta_lr"])
    expected = [
        0.01 + 0.5 * (lr - 0.01) * (1 + math.cos(math.pi * t / total)) for t in range(total)
    ]
    assert seen == pytest.approx(expected)
    b, q = outer()
    for _ in range(4):
        q.grad = torch.ones(1)
        b.step(1.0)
    c, r = outer()
    c.load_state_dict(b.state_dict())
    r.grad = torch.ones(1)
    assert c.step(1.0)["meta_lr"] == pytest.approx(expected[4])
