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
# # Searched losses: TaylorGLO and EvoMAL
#
# Two loss-function searches, one meta-trainer. **TaylorGLO** (Gonzalez & Miikkulainen,
# arXiv 2002.00059) searches the 8 coefficients of a third-order Taylor polynomial with
# CMA-ES; **EvoMAL** (Raymond et al., arXiv 2209.08907) evolves expression trees with
# genetic programming and tunes a weight on every node by unrolled differentiation. Both
# are `Evolution` estimators: one generation per meta-step, the whole population trained
# as one vmapped run. We compare the searched losses with cross-entropy, print their
# formulas and draw them.

# %%
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt

import learnreg
from learnreg import losses
from learnreg.eval.loss_shape import loss_profile

FAST = os.environ.get("LEARNREG_FAST", "0") == "1"
root = Path(tempfile.mkdtemp())
common = ["logger.backends=[]"]
taylor_fast = ["meta_steps=3", "estimator.searcher.population=6", "estimator.fitness_steps=200", "meta_test.steps=300", "meta_test.seeds=1"]
evomal_fast = [
    "meta_steps=2", "estimator.searcher.population=4", "estimator.fitness_steps=100",
    "estimator.local_search.steps=20", "meta_test.steps=300", "meta_test.seeds=1",
    "estimator.filters=[{_component_: prediction_descent, steps: 100}]",
]

# %%
taylor = learnreg.run("taylorglo/digits_mlp_fast", common + (taylor_fast if FAST else []), out=root / "taylorglo", progress=False)
print(learnreg.runner.format_summary(taylor))

# %%
evomal = learnreg.run("evomal/digits_mlp", common + (evomal_fast if FAST else []), out=root / "evomal", progress=False)
print(learnreg.runner.format_summary(evomal))

# %% [markdown]
# The learned losses load as ordinary criteria; the symbolic one prints as a formula.

# %%
taylor_loss = losses.load(root / "taylorglo" / "learned" / "loss")
evomal_loss = losses.load(root / "evomal" / "learned" / "loss")
print("TaylorGLO:", taylor_loss.describe() if hasattr(taylor_loss, "describe") else taylor_loss)
print("EvoMAL   :", evomal_loss.formula())

# %% [markdown]
# Their shapes as functions of the target-class probability, next to cross-entropy:

# %%
for name, loss in (("cross-entropy", losses.CrossEntropy()), ("TaylorGLO", taylor_loss), ("EvoMAL", evomal_loss)):
    grid, values = loss_profile(loss, "classification", 10)
    low = min(values)
    plt.plot(grid, [v - low for v in values], label=name)
plt.xlabel("target-class probability")
plt.ylabel("loss (shifted to min 0)")
plt.yscale("symlog")
plt.legend()

# %% [markdown]
# Fitness per generation (validation error of the best candidate so far):

# %%
for name in ("taylorglo", "evomal"):
    paths = learnreg.plot(root / name)
    print(name, [p.name for p in paths])
