"""The optimizee task family and the configs/lo presets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import FASHION_MNIST

from learnreg import components
from learnreg import config as configlib
from learnreg.data.optimizees import OptimizeeFamily
from learnreg.errors import ConfigError
from learnreg.experiment import build
from learnreg.optim.teachers import TeacherObjective
from learnreg.optimizers import FlatRule

PRESETS = sorted((Path(__file__).resolve().parent.parent / "configs" / "lo").glob("*.yaml"))
FALLBACK = ["task.datasets=[digits, wine, breast_cancer]", "task.meta_test.task=digits"]


def test_family_samples_datasets_architectures_deterministically():
    family = OptimizeeFamily(
        datasets=["wine", "breast_cancer"],
        widths=[[4], [6, 6]],
        activations=["relu", "tanh"],
        meta_test={"model": {"_component_": "mlp", "hidden": [5], "activation": "sigmoid"}},
    )
    names = [family.sample(i).name for i in range(24)]
    assert names == [family.sample(i).name for i in range(24)]
    assert {n.split("/")[0] for n in names} == {"wine", "breast_cancer"}
    assert len(set(names)) >= 6
    task = family.sample(3)
    model = task.build_model(0)
    assert model[1].in_features == task.input_shape[0]
    test = family.meta_test_task(0)
    assert "sigmoid" in test.name and test.build_model(0)[1].out_features == 5
    assert test.name not in names  # an optimizee not seen in meta-training


def test_family_errors():
    with pytest.raises(ConfigError, match="at least one dataset"):
        OptimizeeFamily(datasets=[])
    with pytest.raises(ConfigError, match="unknown keys"):
        OptimizeeFamily(meta_test={"modle": "mlp"})


@pytest.mark.parametrize("path", PRESETS, ids=[p.stem for p in PRESETS])
def test_presets_build_with_the_sklearn_fallback(path):
    cfg = configlib.load(path, [*FALLBACK, "device=cpu"])
    exp = build(cfg)
    assert isinstance(exp.trainer.biases.optimizer, FlatRule)
    teacher = path.stem.split("_")[1]
    teacher = "none" if teacher == "pes" else teacher  # lo/mlp_pes: no teacher, PES
    assert isinstance(exp.trainer.ctx.objective, TeacherObjective) == (teacher != "none")
    assert exp.trainer.meta_grad_clip == 1.0
    assert exp.trainer.estimator.average


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST), reason="Fashion-MNIST not installed")
def test_presets_use_real_fashion_mnist():
    cfg = configlib.load(PRESETS[0])
    family = components.instantiate("task", cfg["task"], model=cfg["model"])
    task = family.sample(0)
    assert task.input_shape == (784,) and len(task.train) == 10000 and len(task.test) == 2000
