"""The Evolution estimator: resume equivalence (CMA-ES and GP), a generation in which
every candidate is rejected, the best-so-far loss role, and what a run writes
(learned/ outputs, search metrics, population tables in jsonl and W&B)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import Interrupt, interrupted_at
from test_population_eval import digits

import learnreg
import learnreg.estimators.evaluators.backends
import learnreg.estimators.searchers.base
from learnreg import losses
from learnreg.core.bias import Biases
from learnreg.core.objectives import TaskError
from learnreg.core.task import SingleTask
from learnreg.core.trainer import MetaTrainer
from learnreg.estimators import Evolution
from learnreg.inits import RandomInit
from learnreg.losses import SymbolicLoss, TaylorLoss
from learnreg.losses.search import PredictionDescent
from learnreg.optimizers import SGD
from learnreg.tracking import load_checkpoint, save_checkpoint
from learnreg.tracking.wandb_offline import read_run

CMAES = {
    "searcher": {"_component_": "cmaes", "population": 6},
    "fitness_steps": 30,
    "filters": ["taylor_invariant"],
}
GP = {
    "searcher": {"_component_": "gp", "population": 6},
    "fitness_steps": 20,
    "filters": [{"_component_": "prediction_descent", "steps": 30}],
    "local_search": {"steps": 2, "lr": 0.01},
}


def same(a, b) -> bool:
    """Equality that treats NaN (a rejected candidate's fitness) as equal to itself."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def make_trainer(loss, estimator: dict) -> MetaTrainer:
    family = SingleTask(digits())
    biases = Biases(loss, SGD(0.05, momentum=0.9, nesterov=True), RandomInit())
    return MetaTrainer(family, biases, TaskError(), Evolution(**estimator), seed=1, device="cpu")


@pytest.mark.parametrize(
    "loss, estimator", [(TaylorLoss, CMAES), (SymbolicLoss, GP)], ids=["cmaes", "gp"]
)
def test_resumed_search_ends_where_an_uninterrupted_one_does(tmp_path, loss, estimator):
    straight = make_trainer(loss(), estimator).fit(4, progress=False)
    first = make_trainer(loss(), estimator).fit(2, progress=False)
    save_checkpoint(tmp_path / "search.pt", first.state_dict())
    state = load_checkpoint(tmp_path / "search.pt")  # weights_only: plain data only
    resumed = make_trainer(loss(), estimator)
    resumed.load_state_dict(state)
    resumed.fit(4, progress=False)
    a, b = straight.estimator, resumed.estimator
    assert same(a.history, b.history) and same(a.cache, b.cache)
    assert a.best["fitness"] == b.best["fitness"] and a.best["genome"] == b.best["genome"]
    for key, value in straight.biases.loss.state_dict().items():
        assert torch.equal(value, resumed.biases.loss.state_dict()[key])
    searcher_a, searcher_b = a.searcher.state_dict(), b.searcher.state_dict()
    if "cma" in searcher_a:
        assert torch.equal(searcher_a["cma"]["_mean"], searcher_b["cma"]["_mean"])
        assert searcher_a["cma"]["_sigma"] == searcher_b["cma"]["_sigma"]
    else:
        assert searcher_a["trees"] == searcher_b["trees"]
    assert math.isfinite(a.best["fitness"]) and a.history[-1]["search/total_evaluated"] > 0


def test_the_loss_role_holds_the_best_candidate_so_far():
    trainer = make_trainer(TaylorLoss(), CMAES)
    best = math.inf
    for generation in range(1, 4):
        trainer.fit(generation, progress=False)
        record = trainer.estimator.history[-1]
        best = (
            min(best, record["search/generation_best"])
            if math.isfinite(record["search/generation_best"])
            else best
        )
        assert record["search/best_fitness"] == best
    theta = trainer.biases.loss.theta.detach()
    assert torch.equal(theta, trainer.estimator.best["state"]["theta"])
    assert trainer.biases.loss.satisfies_invariant()


def test_a_generation_with_every_candidate_rejected_does_not_crash():
    everything = {
        **GP,
        "filters": [{"_component_": "prediction_descent", "steps": 5, "threshold": 1e9}],
    }
    trainer = make_trainer(SymbolicLoss(), everything)
    before = trainer.biases.loss.expression
    trainer.fit(2, progress=False)
    for record in trainer.estimator.history:
        assert record["search/rejected"] == 6 and record["search/evaluated"] == 0
        assert math.isnan(record["search/best_fitness"]) and math.isnan(
            record["search/mean_fitness"]
        )
    assert trainer.biases.loss.expression == before  # nothing better was found


def test_local_search_needs_a_learnable_loss():
    trainer = make_trainer(SymbolicLoss(learnable=False), GP)
    with pytest.raises(learnreg.errors.ConfigError, match="local_search"):
        trainer.fit(1, progress=False)


RUN = {
    "method": "evomal",
    "task": {"_component_": "digits", "batch_size": 32},
    "model": {"_component_": "mlp", "hidden": [16]},
    "loss": {"_component_": "symbolic"},
    "optimizer": {"_component_": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True},
    "objective": {"_component_": "task_error"},
    "estimator": {"_component_": "evolution", **GP},
    "meta_steps": 3,
    "checkpoint_every": 1,
    "meta_test": {"steps": 30, "seeds": 1, "eval_every": 30},
    "logger": {"backends": []},
}


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_search_run_writes_its_outputs_and_resumes(tmp_path):
    reference = learnreg.run(RUN, out=tmp_path / "ref", progress=False)
    learned = tmp_path / "ref" / "learned"
    for name in (
        "loss.json",
        "loss.safetensors",
        "loss.png",
        "loss_formula.txt",
        "search_fitness.png",
        "search_history.json",
    ):
        assert (learned / name).is_file(), name
    history = json.loads((learned / "search_history.json").read_text())
    assert [g["generation"] for g in history["generations"]] == [1, 2, 3]
    loss = losses.load(learned / "loss")  # the best tree, with its tuned weights
    assert loss.expression == history["best"]["genome"]
    assert "loss = mean over batch" in (learned / "loss_formula.txt").read_text()
    records = _records(tmp_path / "ref")
    search = [r for r in records if "search/best_fitness" in r]
    assert [r["meta_step"] for r in search] == [1, 2, 3]
    tables = [r for r in records if r.get("table") == "search/population"]
    assert [t["meta_step"] for t in tables] == [1, 2, 3]
    assert tables[0]["columns"][:4] == ["generation", "candidate", "genome", "fitness"]
    assert len(tables[0]["rows"]) == 6
    assert reference["baseline"]["test"]["error"] >= 0

    with interrupted_at(Evolution, "estimate", 3), pytest.raises(Interrupt):
        learnreg.run(RUN, out=tmp_path / "run", progress=False)
    resumed = learnreg.run(RUN, out=tmp_path / "run", progress=False)
    strip = lambda s: {k: v for k, v in s.items() if not k.endswith("_seconds")}  # noqa: E731
    assert strip(resumed) == strip(reference)
    assert _records(tmp_path / "run") == records


def test_a_cmaes_search_run_resumes_to_the_uninterrupted_result(tmp_path):
    """The CMA-ES state (numpy arrays, its RNG) comes back from a checkpoint read onto the
    run's device (a GPU where there is one)."""
    run = {
        **RUN,
        "method": "taylorglo",
        "loss": {"_component_": "taylor"},
        "estimator": {"_component_": "evolution", **CMAES},
    }
    reference = learnreg.run(run, out=tmp_path / "ref", progress=False)
    with interrupted_at(Evolution, "estimate", 3), pytest.raises(Interrupt):
        learnreg.run(run, out=tmp_path / "run", progress=False)
    resumed = learnreg.run(run, out=tmp_path / "run", progress=False)
    strip = lambda s: {k: v for k, v in s.items() if not k.endswith("_seconds")}  # noqa: E731
    assert strip(resumed) == strip(reference)


def test_population_tables_reach_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = {**RUN, "meta_steps": 2, "logger": {"backends": ["wandb"]}}
    learnreg.run(cfg, out=tmp_path, progress=False)
    rows = read_run(tmp_path)["history"]
    tables = [row for row in rows if row.get("search/population/_type") == "table-file"]
    assert [row["meta_step"] for row in tables] == [1, 2]
    assert tables[0]["search/population/nrows"] == 6 and tables[0]["search/population/ncols"] == 6
    assert [row["search/evaluated"] for row in rows if "search/evaluated" in row]


PRESETS = [
    "taylorglo/digits_mlp",
    "taylorglo/digits_mlp_fast",
    "taylorglo/fmnist_cnn",
    "evomal/diabetes_mlp",
    "evomal/digits_mlp",
    "evomal/fmnist_cnn",
    "gplfl/diabetes_mlp",
    "gplfl/digits_mlp",
    "gplfl/fmnist_cnn",
]


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_build(preset):
    from pathlib import Path

    from conftest import FASHION_MNIST

    from learnreg import config as configlib
    from learnreg.experiment import build

    if "fmnist" in preset and not Path(FASHION_MNIST).is_dir():
        pytest.skip("Fashion-MNIST (Debian's dataset-fashion-mnist) is not installed")
    overrides = ["task.train_size=500", "task.val_size=200"] if "fmnist" in preset else []
    cfg = configlib.load(f"configs/{preset}.yaml", overrides + ["device=cpu"])
    trainer = build(cfg).trainer
    estimator = trainer.estimator
    assert isinstance(estimator, Evolution) and not estimator.needs_outer
    assert (estimator.local_search is not None) == preset.startswith("evomal")
    assert trainer.biases.loss.is_learned == (not preset.startswith("gplfl"))


def test_describe_prints_a_learned_formula(tmp_path, capsys):
    from learnreg.cli import main

    loss = SymbolicLoss(num_classes=3, expression="mul(-1.0, mul(y, log(fx)))", learnable=False)
    losses.save(loss, tmp_path / "learned" / "loss")
    assert main(["describe", str(tmp_path)]) == 0
    assert "-y*log(f(x))" in capsys.readouterr().out
    assert main(["describe", str(tmp_path / "missing")]) == 2


@pytest.mark.parametrize(
    "estimator, message",
    [
        ({"filters": ["taylor_invariants"]}, "unknown filter 'taylor_invariants'"),
        ({"searcher": {"_component_": "cmaes", "popsize": 4}}, "no argument 'popsize'"),
        ({"searcher": "genetic"}, "unknown searcher 'genetic'"),
        ({"evaluator": {"_component_": "vmap", "max_batch": 0}}, "max_batch must be >= 1"),
        ({"local_search": {"steps": 5, "objective": "task_error"}}, "differentiable objective"),
        ({"local_search": {"stepz": 5}}, "valid keys: steps"),
        ({"fitness_steps": 0}, "fitness_steps"),
    ],
)
def test_bad_search_settings_are_clear_errors(estimator, message):
    import re

    with pytest.raises(learnreg.errors.ConfigError, match=re.escape(message)):
        Evolution(**estimator)


def test_the_invariant_filter_refuses_other_losses():
    trainer = make_trainer(SymbolicLoss(), {**GP, "filters": ["taylor_invariant"]})
    with pytest.raises(learnreg.errors.ConfigError, match="taylor_invariant filter applies"):
        trainer.fit(1, progress=False)


class ShiftedCE(losses.LossRole):
    """Cross-entropy plus a constant: every shift has the same gradients."""

    def __init__(self, shift: float = 0.0, scale: float = 1.0):
        super().__init__()
        self.register_buffer("shift", torch.tensor(float(shift)))
        self.register_buffer("scale", torch.tensor(float(scale)))

    def forward(self, pred, target):
        return self.scale * torch.nn.functional.cross_entropy(pred, target) + self.shift


class Scripted(learnreg.estimators.searchers.base.Searcher):
    """Proposes a fixed list of (shift, scale) genomes per generation."""

    def __init__(self, generations):
        self.generations, self.told = list(generations), []

    def start(self, template, seed):
        pass

    def ask(self):
        return self.generations.pop(0)

    def tell(self, genomes, fitness):
        self.told.append(fitness)

    def build(self, genome, template, seed):
        return ShiftedCE(*genome)

    def key(self, genome):
        return repr(genome)  # the cache alone cannot tell that the shifts are equivalent

    def describe(self, genome):
        return f"{genome[1]} * CE + {genome[0]}"

    def state_dict(self):
        return {}


class CountingEvaluator(learnreg.estimators.evaluators.backends.SerialEvaluator):
    def __init__(self):
        super().__init__()
        self.trained = []

    def evaluate(self, problem, losses):
        self.trained += [(float(loss.shift), float(loss.scale)) for loss in losses]
        return super().evaluate(problem, losses)


def test_gradient_equivalence_reuses_a_fitness_without_training():
    searcher = Scripted([[(0.0, 1.0)], [(5.0, 1.0), (0.0, 3.0)]])
    evaluator = CountingEvaluator()
    descent = {"_component_": "prediction_descent", "steps": 2, "lr": 1.0, "equivalence_tol": 0.01}
    estimator = Evolution(searcher, evaluator, fitness_steps=10, filters=[descent])
    family = SingleTask(digits())
    biases = Biases(ShiftedCE(), SGD(0.05), RandomInit())
    trainer = MetaTrainer(family, biases, TaskError(), estimator, seed=1, device="cpu")
    trainer.fit(2, progress=False)
    # CE + 5 has CE's gradients: not trained, CE's fitness reused; 3 * CE is trained
    assert evaluator.trained == [(0.0, 1.0), (0.0, 3.0)]
    assert searcher.told[1][0] == searcher.told[0][0] and math.isfinite(searcher.told[0][0])
    assert estimator.history[1]["search/equivalent"] == 1
    assert estimator.history[1]["search/evaluated"] == 1
    # the archive travels with the checkpoint
    state = estimator.state_dict()["filters"][0]
    assert len(state["archive"]) == 2 and len(state["archive"][0][0]) == 100


@pytest.mark.parametrize("preset", ["evomal/digits_mlp", "gplfl/digits_mlp"])
def test_mnist_like_evomal_presets_resolve_to_plain_sgd_and_the_mnist_filters(preset):
    from learnreg import config as configlib
    from learnreg.experiment import build

    trainer = build(configlib.load(preset, ["device=cpu"])).trainer
    args = trainer.biases.optimizer.init_args
    assert args["lr"] == 0.01 and args.get("momentum", 0.0) == 0.0
    assert args.get("weight_decay", 0.0) == 0.0 and not args.get("nesterov", False)
    (descent,) = trainer.estimator.filters
    assert descent.steps == 100 and descent.optimizer == "adam" and descent.lr == 0.01
    assert descent.equivalence_tol == 0.01


@pytest.mark.parametrize(
    "preset", ["evomal/digits_mlp", "evomal/fmnist_cnn", "evomal/diabetes_mlp"]
)
def test_the_presets_rejection_protocol_passes_the_task_loss_and_rejects_its_negation(preset):
    """The filter must let the task loss through: with plain SGD at lr 0.01 for 100 steps
    the mean-reduced loss barely moves the logits and every candidate, cross-entropy
    included, was rejected (the search then never trained anything)."""
    from learnreg import config as configlib
    from learnreg.experiment import build
    from learnreg.losses.symbolic import SymbolicLoss

    trainer = build(configlib.load(preset, ["device=cpu"])).trainer
    (descent,) = trainer.estimator.filters
    kind = trainer.biases.loss.kind
    task_loss = SymbolicLoss(kind=kind, num_classes=trainer.biases.loss.num_classes)
    negated = SymbolicLoss(
        kind=kind,
        num_classes=trainer.biases.loss.num_classes,
        expression="mul(y, log(fx))"
        if kind == "classification"
        else "mul(-1.0, square(sub(fx, y)))",
    )
    passed, rejected = descent([task_loss, negated], trainer.ctx)
    assert passed is None
    assert isinstance(rejected, str) and rejected.startswith("rejection protocol")
    sgd = PredictionDescent(steps=100, optimizer="sgd", momentum=0.0, nesterov=False)
    if preset == "evomal/digits_mlp":  # the failure this test guards against
        assert sgd([task_loss], trainer.ctx)[0] is not None


def test_diabetes_evomal_keeps_nesterov_and_taylorglo_has_the_paper_search():
    from learnreg import config as configlib

    diabetes = configlib.load("evomal/diabetes_mlp")["optimizer"]
    assert diabetes["momentum"] == 0.9 and diabetes["nesterov"] and diabetes["weight_decay"] == 5e-4
    paper = configlib.load("taylorglo/digits_mlp")["estimator"]
    assert paper["searcher"]["population"] == 28 and paper["fitness_steps"] == 2000
    fast = configlib.load("taylorglo/digits_mlp_fast")["estimator"]
    assert fast["searcher"]["population"] == 20 and fast["fitness_steps"] == 1000


def test_the_evaluator_is_closed_when_the_search_ends():
    """Meta-training's end (or its failure) closes the evaluator: a Ray instance or a
    process pool does not outlive the search."""
    from learnreg.estimators.evaluators.backends import SerialEvaluator

    class Counting(SerialEvaluator):
        closed = 0

        def close(self):
            Counting.closed += 1

    trainer = make_trainer(TaylorLoss(), {**CMAES, "evaluator": Counting()})
    trainer.fit(2, progress=False)
    assert Counting.closed == 1
    trainer.estimator.evaluator.evaluate = lambda problem, losses: 1 / 0
    with pytest.raises(ZeroDivisionError):
        trainer.fit(4, progress=False)
    assert Counting.closed == 2 and trainer.meta_step == 2
