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
# # AdaLFL: a loss that keeps learning during training
#
# Raymond et al., *Meta-Learning Adaptive Loss Functions* (arXiv 2301.13247). The loss
# network is warmed up offline (ML3-style), then updated **online**, once after every base
# update, for the whole training run. The paper reports three effects; this notebook
# looks for each in a run:
#
# 1. an implicit learning-rate schedule: the size of the learned loss's updates relative to
#    cross-entropy's at the same inner step changes during training;
# 2. adaptive label smoothing: the minimum of the learned loss over the target probability
#    moves below 1;
# 3. better test error than cross-entropy with the same optimizer and budget (the summary
#    also compares with cross-entropy at a learning rate tuned on validation and with a
#    meta-learned learning rate: is it more than a learning rate?).

# %%
import json
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt

import learnreg

FAST = os.environ.get("LEARNREG_FAST", "0") == "1"
overrides = ["logger.backends=[]", "meta_test.eval_every=100" if FAST else "meta_test.eval_every=250"]
if FAST:
    overrides += ["meta_steps=100", "meta_test.steps=800"]
out = Path(tempfile.mkdtemp())
summary = learnreg.run("adalfl/digits_mlp", overrides, out=out, progress=False)
print(learnreg.runner.format_summary(summary))

# %%
records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
curve = [r for r in records if r.get("seed") == 0 and "meta_test/learned/loss_profile" in r]
steps = [r["inner_step"] for r in curve]

fig, axes = plt.subplots(1, 3, figsize=(15, 4))
grid = [0.01 + 0.98 * k / 40 for k in range(41)]
cmap = plt.get_cmap("viridis")
for i, r in enumerate(curve):
    axes[0].plot(grid, r["meta_test/learned/loss_profile"], color=cmap(i / max(len(curve) - 1, 1)))
axes[0].set(title="learned loss over training (dark → light)", xlabel="target probability", ylabel="loss")
axes[1].plot(steps, [r["meta_test/learned/loss_argmin"] for r in curve], marker="o")
axes[1].set(title="argmin of the loss over p_target", xlabel="inner step", ylim=(0, 1.05))
ratio = [r for r in records if r.get("seed") == 0 and "meta_test/update_ratio" in r]
axes[2].plot([r["inner_step"] for r in ratio], [r["meta_test/update_ratio"] for r in ratio], marker="o")
axes[2].set(title="‖Δθ learned‖ / ‖Δθ CE‖ (same step)", xlabel="inner step", yscale="log")
plt.tight_layout()

# %% [markdown]
# Learning curves against cross-entropy (same model initialization and batch order):

# %%
for tag in ("learned", "baseline"):
    rows = [r for r in records if r.get("seed") == 0 and f"meta_test/{tag}/test_error" in r]
    plt.plot([r["inner_step"] for r in rows], [r[f"meta_test/{tag}/test_error"] for r in rows], label=tag)
plt.xlabel("inner step")
plt.ylabel("test error")
plt.legend()
print("final argmin of the learned loss:", curve[-1]["meta_test/learned/loss_argmin"])
