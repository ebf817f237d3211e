"""PGA, gradient norm, surrogate gap, FGSM/PGD against closed forms; `learnreg eval`."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import learnreg
from learnreg.cli import main
from learnreg.core.task import Split
from learnreg.errors import CheckpointError
from learnreg.eval import robustness, sharpness
from learnreg.eval.report import evaluate_run
from learnreg.optim import LearnedOptimizer
from learnreg.tracking.export import load_bias


def _least_squares(n=64, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(n, 1, generator=g, dtype=torch.float64)
    model = nn.Linear(d, 1, bias=False).double()
    w_star = torch.linalg.lstsq(x, y).solution.T  # the minimum of mean((xw - y)^2)
    curvature = float(torch.linalg.eigvalsh(x.T @ x / n).max())  # L(w*+δ) - L(w*) = δᵀ(XᵀX/n)δ
    return model, Split(x, y), w_star, curvature


def test_pga_finds_the_sharpest_direction_of_a_quadratic():
    model, split, w_star, curvature = _least_squares()
    loss = sharpness.SplitLoss(model, {"weight": w_star}, {}, split, "regression")
    for radius in (0.01, 0.1):
        found = sharpness.pga_loss_increase(loss, radius, steps=60)
        exact = curvature * radius**2  # ascent only finds points inside the ball: a lower bound
        assert 0.98 * exact <= found <= exact * (1 + 1e-9)


def test_gradient_norm_and_surrogate_gap_closed_forms():
    model, split, w_star, _ = _least_squares()
    w = w_star + 0.3
    loss = sharpness.SplitLoss(model, {"weight": w}, {}, split, "regression")
    x, y = split.x, split.y
    grad = (2 * x.T @ (x @ w.T - y) / len(x)).T
    assert sharpness.gradient_norm(loss) == pytest.approx(float(grad.norm()), rel=1e-10)
    rho = 0.05
    u = grad / grad.norm()
    hessian = 2 * x.T @ x / len(x)
    gap = rho * float(grad.norm()) + 0.5 * rho**2 * float(u @ hessian @ u.T)
    assert sharpness.surrogate_gap(loss, rho) == pytest.approx(gap, rel=1e-8)


def _linear_classifier():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 4, generator=g)
    w = torch.randn(3, 4, generator=g)
    y = (x @ w.T).argmax(-1)
    model = nn.Linear(4, 3, bias=False)
    return model, {"weight": w}, Split(x, y)


def test_fgsm_matches_the_closed_form_and_pgd_is_stronger():
    model, params, split = _linear_classifier()
    eps = 0.3
    x, y, w = split.x, split.y, params["weight"]
    p = (x @ w.T).softmax(-1)
    grad_x = (p - F.one_hot(y, 3).float()) @ w  # ∇ₓ CE for a linear model, per example
    expected = float(((x + eps * grad_x.sign()) @ w.T).argmax(-1).eq(y).float().mean())
    fgsm = robustness.fgsm_accuracy(model, params, {}, split, eps)
    assert fgsm == pytest.approx(expected)
    pgd = robustness.pgd_accuracy(model, params, {}, split, eps, steps=10)
    assert pgd <= fgsm < 1.0


CONFIG = {
    "method": "lo-test",
    "task": {
        "_component_": "optimizee_family",
        "datasets": [{"_component_": "wine", "batch_size": 32}, "breast_cancer"],
        "widths": [[8]],
        "activations": ["tanh", "relu"],
        "meta_test": {
            "task": {"_component_": "wine", "batch_size": 32},
            "model": {"_component_": "mlp", "hidden": [12], "activation": "sigmoid"},
        },
    },
    "optimizer": {"_component_": "mlp", "hidden": [8]},
    "objective": {"_component_": "gsam", "rho": 0.05, "alpha": 0.2},
    "estimator": {"_component_": "truncated_unroll", "window": 2, "horizon": 4, "average": True},
    "meta_grad_clip": 1.0,
    "meta_steps": 3,
    "meta_test": {"steps": 20, "seeds": 2, "eval_every": 10},
    "logger": {"backends": []},
}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lo-run")
    learnreg.run(CONFIG, out=out, progress=False)
    return out


def test_learnreg_eval_writes_summary_and_log(finished_run, capsys):
    assert (
        main(
            [
                "eval",
                str(finished_run),
                "--radii",
                "0.01",
                "0.1",
                "--pga-steps",
                "5",
                "--pgd-steps",
                "3",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "pga_0.1" in printed
    summary = json.loads((finished_run / "summary.json").read_text())
    for tag in ("learned", "baseline"):
        mean = summary["eval"][tag]["mean"]
        for key in ("test_accuracy", "pga_0.01", "pga_0.1", "grad_norm", "fgsm_0.1", "pgd_0.1"):
            assert key in mean
        assert 0 <= mean["pga_0.01"] <= mean["pga_0.1"]
        assert len(summary["eval"][tag]["per_seed"]) == 2
    # the test accuracy is the run's own meta-test figure (same saved parameters)
    assert summary["eval"]["learned"]["mean"]["test_accuracy"] == pytest.approx(
        summary["test"]["accuracy"]
    )
    records = [
        json.loads(line) for line in (finished_run / "metrics.jsonl").read_text().splitlines()
    ]
    assert any("eval/learned/pga_0.1" in r for r in records)
    assert (finished_run / "plots" / "pga.png").stat().st_size > 10_000


def test_from_run_loads_the_trained_rule(finished_run):
    model = nn.Linear(3, 2)
    opt = LearnedOptimizer.from_run(finished_run, model.parameters())
    trained = load_bias(finished_run / "learned" / "optimizer")
    for (k, a), (_, b) in zip(opt.rule.state_dict().items(), trained.state_dict().items()):
        assert torch.equal(a, b), k
    assert not torch.equal(trained.skip, torch.tensor([0.0, 0.0, -1.0, 0.0, 0.0, 0.0]))


def test_eval_errors(tmp_path):
    with pytest.raises(CheckpointError, match="config.yaml"):
        evaluate_run(tmp_path)
    assert main(["eval", str(tmp_path)]) == 2
