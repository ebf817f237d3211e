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
# # NPBML: procedural biases that add up
#
# Raymond et al., *Meta-Learning Neural Procedural Biases* (arXiv 2406.07983) learn the
# initialization (MAML), an optimizer (WarpGrad-style warp layers in the forward pass,
# meta-parameters only, while the inner loop adapts only the last blocks and the head),
# a learned loss and FiLM task conditioning together. The ablation ladder adds one at a
# time: MAML → + learned loss → + warp layers → + FiLM. Here on 10-shot sine regression
# (an MLP with linear warp layers), with 95% t-intervals over the meta-test episodes.

# %%
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
from scipy import stats

import learnreg

FAST = os.environ.get("LEARNREG_FAST", "0") == "1"
root = Path(tempfile.mkdtemp())
ladder = {
    "MAML": "npbml/ablation/sine_0_maml",
    "+ learned loss": "npbml/ablation/sine_1_learned_loss",
    "+ warp layers": "npbml/ablation/sine_2_warp",
    "+ FiLM (NPBML)": "npbml/sine",
}
budget = ["meta_steps=20", "meta_test.seeds=50"] if FAST else ["meta_steps=3000", "meta_test.seeds=600"]
results = {}
for rung, preset in ladder.items():
    summary = learnreg.run(preset, budget + ["logger.backends=[]"], out=root / preset.replace("/", "-"), progress=False)
    n = summary["meta_test_seeds"]
    t_half = summary["test_std"]["mse"] * stats.t.ppf(0.975, n - 1) / n**0.5
    results[rung] = (summary["test"]["mse"], t_half)
    print(f"{rung:<18} MSE {results[rung][0]:.4f} ± {results[rung][1]:.4f}")

# %%
names = list(results)
plt.errorbar(range(len(names)), [results[n][0] for n in names], yerr=[results[n][1] for n in names], fmt="o", capsize=4)
plt.xticks(range(len(names)), names, rotation=15)
plt.ylabel("meta-test MSE (95% t-interval)")
plt.title("NPBML ablation ladder, 10-shot sine regression")
