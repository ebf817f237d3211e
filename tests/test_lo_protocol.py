"""The Learning Regularizers protocol's pieces: which batch the meta-objective judges, and
PGA's first-order term ``r·‖∇L‖`` (what "flatter" must be net of)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from benchmarks.learning_regularizers import first_order_term
from learnreg import config as configlib
from learnreg.core.estimator import meta_step
from learnreg.core.inner import forward
from learnreg.core.task import Split
from learnreg.eval import sharpness
from learnreg.experiment import build


def _lo_experiment(objective: dict, objective_batch: str):
    cfg = {
        "method": "lo-test",
        "task": {
            "_component_": "optimizee_family",
            "datasets": [{"_component_": "digits", "batch_size": 16}],
            "widths": [[6]],
            "activations": ["relu"],
        },
        "optimizer": {"_component_": "mlp", "hidden": [8, 8]},
        "objective": objective,
        "estimator": {
            "_component_": "truncated_unroll",
            "window": 3,
            "horizon": 30,
            "objective_batch": objective_batch,
        },
        "meta_steps": 1,
        "device": "cpu",
        "logger": {"backends": []},
    }
    return build(configlib.load(cfg))


@pytest.mark.parametrize(
    "objective", [{"_component_": "task_loss"}, {"_component_": "sam", "rho": 0.05}]
)
def test_the_meta_objective_judges_the_training_batch_when_configured(objective):
    """``objective_batch: train``: the meta-loss is the objective on the batch the rule just
    stepped on, at the parameters after the window; ``val`` judges another batch."""
    losses = {}
    for where in ("train", "val"):
        exp = _lo_experiment(objective, where)
        ctx = exp.trainer.ctx
        meta_loss = meta_step(ctx, exp.trainer.estimator)["meta_loss"]
        run = exp.trainer.estimator.runs[0]
        x, y = run.last_batch
        if objective["_component_"] == "task_loss":  # the no-teacher arm: the training loss
            by_hand = F.cross_entropy(forward(run.model, run.state, x), y).item()
        else:
            by_hand = ctx.objective(run.model, run.state, (x, y), run.task).item()
        losses[where] = (meta_loss, by_hand)
    assert losses["train"][0] == pytest.approx(losses["train"][1], rel=1e-6)
    assert losses["val"][0] != pytest.approx(losses["val"][1], rel=1e-3)


def test_pga_first_order_term_is_radius_times_the_hand_computed_gradient_norm():
    torch.manual_seed(0)
    n, d, c = 64, 5, 3
    x, y = torch.randn(n, d, dtype=torch.float64), torch.randint(0, c, (n,))
    model = torch.nn.Linear(d, c).double()
    params = {k: v.detach() for k, v in model.named_parameters()}
    loss = sharpness.SplitLoss(model, params, {}, Split(x, y), "classification", None, 16)
    # softmax regression: ∇W = (P − Y)ᵀ X / n, ∇b = mean(P − Y)
    p = F.softmax(x @ params["weight"].T + params["bias"], -1)
    residual = p - F.one_hot(y, c).double()
    grad_w, grad_b = residual.T @ x / n, residual.mean(0)
    norm = torch.sqrt((grad_w**2).sum() + (grad_b**2).sum()).item()
    for radius in (1e-4, 0.1):
        assert first_order_term(loss, radius) == pytest.approx(radius * norm, rel=1e-10)
    # at a tiny radius PGA's increase is its first-order term: the net part is O(r²)
    r = 1e-4
    raw = sharpness.pga_loss_increase(loss, r, steps=20)
    assert raw == pytest.approx(first_order_term(loss, r), rel=0.02)
