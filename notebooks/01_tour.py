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
# # A tour of learnreg
#
# learnreg meta-learns the procedural biases of a learning algorithm: its **loss**, its
# **optimizer** and its **initialization**. This notebook walks through the pieces:
# tasks, the functional inner loop, a learned loss meta-trained with `MetaTrainer`,
# exporting it as an ordinary criterion, and the config-driven `learnreg.run`.
#
# Set `LEARNREG_FAST=1` (CI does) to run everything in about a minute on a CPU.

# %%
import os
import tempfile

import torch
import torch.nn.functional as F

import learnreg
from learnreg.core.bias import Biases
from learnreg.core.inner import init_state, inner_loop
from learnreg.core.objectives import TaskLoss
from learnreg.core.task import SingleTask
from learnreg.core.trainer import MetaTrainer
from learnreg.data import sklearn_task
from learnreg.estimators import TruncatedUnroll
from learnreg.eval.meta_test import aggregate, evaluate
from learnreg.inits import RandomInit
from learnreg.losses import CrossEntropy, NeuralLoss
from learnreg.models import MLP
from learnreg.optimizers import SGD

FAST = os.environ.get("LEARNREG_FAST", "0") == "1"
META_STEPS, TEST_STEPS = (60, 400) if FAST else (500, 5000)
torch.manual_seed(0)

# %% [markdown]
# ## Tasks
# A `Task` holds disjoint train / val / test splits and builds fresh models. The
# scikit-learn datasets ship with the package; splits are seeded and standardized on the
# training split only.

# %%
task = sklearn_task("digits", batch_size=64)
task.model_fn = lambda: MLP(task.input_shape, task.out_features, hidden=[100])
print(task.kind, task.num_classes, len(task.train), len(task.val), len(task.test))

# %% [markdown]
# ## The functional inner loop
# `inner_step` trains a model as a function of a dict of parameters. Under `torch.no_grad()`
# it is ordinary training, and it matches `torch.optim.SGD` step for step:

# %%
model = task.build_model(seed=0)
state = init_state(model, RandomInit(), SGD(lr=0.1))
with torch.no_grad():
    state = inner_loop(model, state, task.stream("train", seed=0), CrossEntropy(), SGD(lr=0.1), 50)

reference = task.build_model(seed=0)
opt = torch.optim.SGD(reference.parameters(), lr=0.1)
stream = task.stream("train", seed=0)
for _ in range(50):
    x, y = stream.next()
    opt.zero_grad()
    F.cross_entropy(reference(x), y).backward()
    opt.step()
print("max difference:", max((state.params[k] - p).abs().max().item() for k, p in reference.named_parameters()))

# %% [markdown]
# ## Meta-training a loss
# The three roles go into `Biases`; the estimator decides how their meta-parameters move.
# `TruncatedUnroll(window=1, horizon=1)` is ML3: one differentiable step from a fresh
# model per meta-step.

# %%
learned = Biases(NeuralLoss("classification", 10), SGD(lr=0.01), RandomInit())
trainer = MetaTrainer(
    SingleTask(task), learned, TaskLoss(), TruncatedUnroll(window=1, horizon=1, objective_batch="train"),
    lambda params: torch.optim.Adam(params, lr=1e-3), device="cpu",
)
trainer.fit(META_STEPS, progress=False)
baseline = Biases(CrossEntropy(), SGD(lr=0.01), RandomInit())
results = aggregate(evaluate(trainer, TEST_STEPS, seeds=2, baseline=baseline, progress=False))
print("learned :", results["learned"]["test"])
print("baseline:", results["baseline"]["test"])

# %% [markdown]
# ## What was learned is an ordinary criterion
# Export it (safetensors + JSON, no pickles) and use it in a plain PyTorch loop.

# %%
folder = tempfile.mkdtemp()
learnreg.losses.save(learned.loss, f"{folder}/loss")
criterion = learnreg.losses.load(f"{folder}/loss")

model = task.build_model(seed=1)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
stream = task.stream("train", seed=1)
for _ in range(TEST_STEPS):
    x, y = stream.next()
    opt.zero_grad()
    criterion(model(x), y).backward()
    opt.step()
with torch.no_grad():
    error = (model(task.test.x).argmax(-1) != task.test.y).float().mean().item()
print(f"test error with the learned criterion: {error:.4f}")

# %% [markdown]
# ## Configs and run directories
# Every method is a YAML preset; `learnreg.run` meta-trains, meta-tests against the
# baseline and writes a run directory (resumable, with metrics, checkpoints, the exported
# biases and plots).

# %%
out = tempfile.mkdtemp()
summary = learnreg.run(
    "ml3/digits_mlp",
    [f"meta_steps={META_STEPS}", f"meta_test.steps={TEST_STEPS}", "logger.backends=[]"],
    out=out,
    progress=False,
)
print(learnreg.runner.format_summary(summary))
print([p.name for p in learnreg.plot(out)])
