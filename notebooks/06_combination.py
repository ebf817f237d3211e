# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A combination no paper tried
#
# A **searched loss** (TaylorGLO), a **learned optimizer** (the per-parameter MLP rule)
# and a **learned initialization** (MAML), meta-trained together on few-shot digits
# episodes, and compared with each part alone. In learnreg this is just another set of
# roles for the same trainer.

# %%
import os
import tempfile
from pathlib import Path

import torch

import learnreg
from learnreg import losses
from learnreg.core.bias import Biases
from learnreg.core.objectives import TaskLoss
from learnreg.core.trainer import MetaTrainer
from learnreg.data import FewShotEpisodes
from learnreg.estimators import TruncatedUnroll
from learnreg.eval.meta_test import aggregate, evaluate
from learnreg.inits import LearnedInit
from learnreg.losses import CrossEntropy, TaylorLoss
from learnreg.models import MLP
from learnreg.optimizers import SGD
from learnreg.registry import lookup

FAST = os.environ.get("LEARNREG_FAST", "0") == "1"
root = Path(tempfile.mkdtemp())

# %% [markdown]
# First the loss: a short TaylorGLO search on ordinary (non-episodic) digits.

# %%
search = ["logger.backends=[]", "meta_test.steps=100" if FAST else "meta_test.steps=1000", "meta_test.seeds=1"]
if FAST:
    search += ["meta_steps=2", "estimator.searcher.population=4", "estimator.fitness_steps=100"]
learnreg.run("taylorglo/digits_mlp_fast", search, out=root / "taylorglo", progress=False)
found = losses.load(root / "taylorglo" / "learned" / "loss")
# TaylorGLO's loss is a sum over classes of one polynomial: the same coefficients serve
# 5-way episodes.
searched = TaylorLoss(num_classes=5, theta=found.theta.tolist()).requires_grad_(False)
print(found.theta.tolist())

# %% [markdown]
# Then four learners on 5-way 5-shot digits episodes, each with a learned init; the
# loss and the optimizer are either fixed (cross-entropy, SGD) or learned (the searched
# loss, the MLP rule).

# %%
family = FewShotEpisodes("digits", ways=5, shots=5, queries=15, model=lambda input_shape, out_features: MLP(input_shape, out_features, hidden=[64]))
meta_steps, episodes = (10, 40) if FAST else (600, 600)


def learner(loss, learned_optimizer: bool):
    model = family.representative().build_model(0)
    optimizer = lookup("optimizer", "mlp")(hidden=[16, 16]) if learned_optimizer else SGD(lr=0.1)
    biases = Biases(loss, optimizer, LearnedInit(model))
    trainer = MetaTrainer(family, biases, TaskLoss(), TruncatedUnroll(window=5, horizon=5, meta_batch=4), lambda p: torch.optim.Adam(p, lr=1e-3), device="cpu")
    trainer.fit(meta_steps, progress=False)
    stats = aggregate(evaluate(trainer, steps=5, seeds=episodes, progress=False))["learned"]
    return stats["test"]["accuracy"], stats["test_ci95"]["accuracy"]


results = {
    "MAML (CE + SGD)": learner(CrossEntropy(), False),
    "MAML + searched loss": learner(searched, False),
    "MAML + learned optimizer": learner(CrossEntropy(), True),
    "all three": learner(searched, True),
}
for name, (acc, ci) in results.items():
    print(f"{name:<26} accuracy {acc:.3f} ± {ci:.3f}")
