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
    p for folder in ("maml", "metasgd", "npbml") for p in (PRESETS / folder).rglob("*.yaml")
)


@pytest.mark.parametrize("path", FEW_SHOT, ids=lambda p: str(p.relative_to(PRESETS)))
def test_preset_builds_its_roles(path):
    if "fmnist" in path.name and not os.path.isdir(FASHION_MNIST):
        pytest.skip("Fashion-MNIST not installed")
    cfg = configlib.load(path, ["device=cpu"])
    exp = build(cfg)
    biases = exp.trainer.biases
    assert cfg["estimator"]["window"] == cfg["estimator"]["horizon"] == 5
    assert type(biases.init).__name__ in ("LearnedInit", "FiLMInit")
    assert cfg["meta_test"]["seeds"] == 600
    assert exp.trainer.ctx.outer.scheduler is not None


def test_short_episodic_run_reports_confidence_intervals(tmp_path):
    summary = run(
        PRESETS / "npbml" / "digits_5w1s.yaml",
        [
            "meta_steps=3",
            "meta_test.seeds=12",
            "model.base.hidden=8",
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
    assert (tmp_path / "learned" / "optimizer.json").is_file()


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
