# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A learned optimizer with and without a SAM teacher
#
# Sahoo & Krishnan, *Learning Regularizers* (arXiv 2510.08968): a learned optimizer
# meta-trained to follow a sharpness-aware teacher (SAM, GSAM, GAM) finds flatter minima
# and keeps doing so on optimizees it never saw, with no regularizer at test time. Here the
# per-parameter MLP rule is meta-trained twice on a family of small tasks, without a
# teacher and under SAM, then both are used as drop-in optimizers on a new optimizee and
# compared by test accuracy and by PGA flatness (the loss increase within an L2 ball).

# %%
import os
import tempfile
from pathlib import Path

import learnreg
from learnreg.eval.report import evaluate_run

FAST = os.environ.get("LEARNREG_FAST", "0") == "1"
root = Path(tempfile.mkdtemp())
base = {
    "task": {
        "_component_": "optimizee_family",
        "datasets": [{"_component_": "wine", "batch_size": 32}, "breast_cancer", "digits"],
        "widths": [[16], [32]],
        "activations": ["tanh", "relu"],
        "meta_test": {"task": "digits", "model": {"_component_": "mlp", "hidden": [24]}},
    },
    "optimizer": {"_component_": "mlp", "hidden": [16, 16]},
    # the meta-objective on the training batch, as the Learning Regularizers protocol (docs/learned_optimizers.md)
    "estimator": {"_component_": "truncated_unroll", "window": 5, "horizon": 40, "meta_batch": 2, "average": True, "objective_batch": "train"},
    "meta_grad_clip": 1.0,
    "meta_steps": 6 if FAST else 200,
    "meta_test": {"steps": 100 if FAST else 1000, "seeds": 2 if FAST else 3, "eval_every": 50},
    "logger": {"backends": []},
}
results = {}
for teacher in ("task_loss", "sam"):
    config = {**base, "method": f"lo-mlp-{teacher}", "objective": {"_component_": teacher}}
    learnreg.run(config, out=root / teacher, progress=False)
    results[teacher] = evaluate_run(root / teacher, radii=[0.005, 0.05], pga_steps=3 if FAST else 10, console=False)

# %%
print("| teacher | accuracy | PGA Δloss r=0.005 | PGA Δloss r=0.05 |")
print("|---|---|---|---|")
for teacher, result in results.items():
    m = result["learned"]["mean"]
    print(f"| {teacher} | {m['test_accuracy']:.4f} | {m['pga_0.005']:.4f} | {m['pga_0.05']:.4f} |")
m = results["task_loss"]["baseline"]["mean"]
print(f"| Adam (baseline) | {m['test_accuracy']:.4f} | {m['pga_0.005']:.4f} | {m['pga_0.05']:.4f} |")

# %% [markdown]
# The trained rule is a drop-in `torch.optim` optimizer:

# %%
import torch
import torch.nn.functional as F

from learnreg.optim import LearnedOptimizer

model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
opt = LearnedOptimizer.from_run(root / "sam", model.parameters())
x, y = torch.randn(128, 64), torch.randint(0, 10, (128,))
for _ in range(20):
    opt.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
print(f"loss after 20 steps: {loss.item():.4f}")
