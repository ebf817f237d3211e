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
# # NPBML: procedural biases that add up
#
# Raymond et al., *Meta-Learning Neural Procedural Biases* (arXiv 2406.07983) learn the
# initialization (MAML), a gradient preconditioner, a learned loss and FiLM task
# conditioning together. The ablation ladder adds one at a time:
# MAML → + learned loss → + preconditioner → + FiLM. Here on 10-shot sine regression,
# with 95% confidence intervals over the meta-test episodes.

# %%
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt

import learnreg

FAST = os.environ.get("LEARNREG_FAST", "0") == "1"
root = Path(tempfile.mkdtemp())
ladder = {
    "MAML": "maml/sine",
    "+ learned loss": "npbml/ablation/sine_1_learned_loss",
    "+ preconditioner": "npbml/ablation/sine_2_preconditioner",
    "+ FiLM (NPBML)": "npbml/sine",
}
budget = ["meta_steps=20", "meta_test.seeds=50"] if FAST else ["meta_steps=3000", "meta_test.seeds=600"]
results = {}
for rung, preset in ladder.items():
    summary = learnreg.run(preset, budget + ["logger.backends=[]"], out=root / preset.replace("/", "-"), progress=False)
    results[rung] = (summary["test"]["mse"], summary["test_ci95"]["mse"])
    print(f"{rung:<18} MSE {results[rung][0]:.4f} ± {results[rung][1]:.4f}")

# %%
names = list(results)
plt.errorbar(range(len(names)), [results[n][0] for n in names], yerr=[results[n][1] for n in names], fmt="o", capsize=4)
plt.xticks(range(len(names)), names, rotation=15)
plt.ylabel("meta-test MSE (95% CI)")
plt.title("NPBML ablation ladder, 10-shot sine regression")
