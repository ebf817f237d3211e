"""``learnreg.load_biases`` and ``learnreg.adapt``: a run's learned few-shot roles in a
user's own loop reproduce the run's own meta-test adaptation."""

from __future__ import annotations

import pytest
import torch

import learnreg
from learnreg import config as configlib
from learnreg.estimators.base import derive_seed
from learnreg.experiment import build_family
from learnreg.models import Conv4
from learnreg.tracking.export import load_state

OVERRIDES = [
    "meta_steps=3",
    "model.hidden=4",
    "estimator.meta_batch=2",
    "meta_test.seeds=2",
    "meta_test.baseline=false",
    "logger.backends=[none]",
]


@pytest.fixture(scope="module")
def metasgd_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("metasgd")
    learnreg.run("metasgd/digits_5w1s", OVERRIDES, out=out, progress=False)
    return out


def test_adapt_equals_the_runners_meta_test_adaptation(metasgd_run):
    cfg = configlib.load(metasgd_run / "config.yaml")
    family = build_family(cfg)
    biases = learnreg.load_biases(metasgd_run)
    assert biases.init.is_learned and biases.optimizer.is_learned and not biases.loss.is_learned
    for index in (0, 1):
        episode = family.meta_test_task(index)
        seed = derive_seed(cfg["seed"], "meta_test", index)
        # A user-built model of the run's architecture (its random weights are replaced
        # by the learned init).
        model = Conv4((1, 8, 8), 5, hidden=4)
        adapted = learnreg.adapt(
            model,
            episode.train.x,
            episode.train.y,
            biases,
            steps=cfg["meta_test"]["steps"],
            seed=seed,
        )
        params, _ = load_state(metasgd_run / "final" / f"learned_seed{index}.safetensors")
        for name, tensor in adapted.named_parameters():
            assert torch.equal(tensor, params[name]), name
        for name, tensor in model.named_parameters():  # the user's model is left as it was
            assert not torch.equal(tensor, params[name]), name


def test_adapt_state_is_differentiable_in_the_meta_parameters(metasgd_run):
    biases = learnreg.load_biases(metasgd_run)
    family = build_family(configlib.load(metasgd_run / "config.yaml"))
    episode = family.meta_test_task(0)
    model = Conv4((1, 8, 8), 5, hidden=4)
    state = learnreg.adapt_state(
        model, episode.train.x, episode.train.y, biases, steps=2, create_graph=True
    )
    query = torch.func.functional_call(model, (state.params, state.buffers), (episode.test.x,))
    torch.nn.functional.cross_entropy(query, episode.test.y).backward()
    grads = [p.grad for p in biases.meta_parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    frozen = learnreg.adapt_state(model, episode.train.x, episode.train.y, biases, steps=2)
    for name, tensor in frozen.params.items():
        assert not tensor.requires_grad
        assert torch.allclose(tensor, state.params[name].detach())


def test_load_biases_refuses_a_directory_that_is_not_a_run(tmp_path):
    with pytest.raises(learnreg.errors.CheckpointError, match="not a run directory"):
        learnreg.load_biases(tmp_path)
