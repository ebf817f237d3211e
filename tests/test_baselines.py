"""The comparison protocol: paired statistics, the learning-rate grid tuned on validation,
the learned-lr control and the summary's comparison blocks."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from conftest import tiny_task

from learnreg.core.bias import Biases
from learnreg.core.objectives import TaskLoss
from learnreg.core.task import SingleTask, Split
from learnreg.core.trainer import MetaTrainer
from learnreg.estimators import TruncatedUnroll
from learnreg.eval import stats
from learnreg.eval.baselines import lr_grid, select, tune_seed
from learnreg.eval.grid_runs import train_grid
from learnreg.eval.meta_test import meta_test_run
from learnreg.eval.metrics import evaluate_split
from learnreg.inits.learned import LearnedInit
from learnreg.inits.random import RandomInit
from learnreg.losses.fixed import MSE, CrossEntropy
from learnreg.models import MLP
from learnreg.optimizers import SGD, Adam, LearnedLR

T_975_3 = 3.1824463052837078  # Student t quantile, 0.975, 3 degrees of freedom (tables)


def _t3_cdf(t: float) -> float:
    """The Student-t CDF with 3 degrees of freedom in closed form."""
    u = t / math.sqrt(3)
    return 0.5 + (u / (1 + u * u) + math.atan(u)) / math.pi


def test_paired_statistics_match_a_hand_computation():
    learned = [0.10, 0.12, 0.11, 0.13]
    baseline = [0.12, 0.13, 0.12, 0.15]
    d = stats.paired(learned, baseline, "error")
    # differences -0.02, -0.01, -0.01, -0.02: mean -0.015, sd = sqrt(4 · 0.005² / 3)
    sd = math.sqrt(4 * 0.005**2 / 3)
    assert d["mean_diff"] == pytest.approx(-0.015)
    assert d["ci95"] == pytest.approx(T_975_3 * sd / 2)
    assert d["ci95_low"] == pytest.approx(-0.015 - T_975_3 * sd / 2)
    t = -0.015 / (sd / 2)
    assert d["p_value"] == pytest.approx(2 * _t3_cdf(t), rel=1e-6)
    assert d["wins"] == 4 and d["n"] == 4 and d["verdict"] == "learned better"
    # accuracy: higher is better, so the same numbers are a loss for the learned side
    assert stats.paired(learned, baseline, "accuracy")["verdict"] == "baseline better"
    assert stats.paired(learned, baseline, "accuracy")["wins"] == 0


def test_an_interval_through_zero_is_no_significant_difference():
    d = stats.paired([0.10, 0.14, 0.11], [0.12, 0.12, 0.12], "error")
    assert d["ci95_low"] < 0 < d["ci95_high"]
    assert d["verdict"] == "no significant difference" and d["wins"] == 2
    assert stats.paired([0.1], [0.2], "error")["verdict"] == "too few seeds"


def test_confidence_intervals_use_student_t_for_the_n_they_have():
    s = stats.summarize([1.0, 3.0])  # std √2: the 2-seed interval is 12.706 · √2 / √2
    assert s["ci95"] == pytest.approx(12.706204736174694) and s["n"] == 2
    assert math.isnan(stats.summarize([1.0])["ci95"])


def test_grid_is_log_spaced_wide_and_holds_the_preset_rate():
    grid = lr_grid(0.01)
    assert len(grid) >= 7 and 0.01 in grid
    assert grid[0] <= 0.1 * 0.01 + 1e-15 and grid[-1] >= 30 * 0.01
    ratios = [b / a for a, b in zip(grid, grid[1:])]
    assert max(ratios) == pytest.approx(min(ratios))
    assert lr_grid(0.01, [0.5, 0.1]) == [0.01, 0.1, 0.5]


def _trainer(task, optimizer):
    biases = Biases(CrossEntropy(), optimizer, RandomInit())
    trainer = MetaTrainer(SingleTask(task), biases, TaskLoss(), TruncatedUnroll(), device="cpu")
    return trainer, biases


@pytest.mark.parametrize(
    "optimizer",
    [SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3), Adam(lr=0.01)],
    ids=["sgd", "adam"],
)
@pytest.mark.parametrize("mode", ["stacked_forward", "vmap", "loop"])
def test_vectorized_grid_trains_exactly_the_sequential_runs(optimizer, mode, monkeypatch):
    """Every way of computing the copies' gradients: the MLP's stacked_forward, vmap (a
    model without one) and the loop."""
    if mode == "vmap":
        monkeypatch.delattr(MLP, "stacked_forward")
    vectorize = mode != "loop"
    task = tiny_task()
    trainer, biases = _trainer(task, optimizer)
    lrs = [0.003, 0.05, 0.4]
    run, states, diverged = train_grid(trainer.ctx, biases, task, 1, 12, lrs, vectorize)
    assert diverged == [None] * 3
    for lr, state in zip(lrs, states):
        one = Biases(
            CrossEntropy(), type(optimizer)(**{**optimizer.init_args, "lr": lr}), RandomInit()
        )
        reference, _ = meta_test_run(trainer, one, task, 1, 12, None, "check")
        for name, value in reference.state.params.items():
            torch.testing.assert_close(state.params[name], value, rtol=1e-10, atol=1e-12)


def test_grid_starts_from_the_baselines_init_not_a_learned_one():
    # A MAML-style learned init belongs to the learned side: the tuned baseline's grid must
    # start where the sequential baseline run starts (the baseline's random init).
    task = tiny_task()
    baseline = Biases(CrossEntropy(), SGD(lr=0.1), RandomInit())
    learned_init = LearnedInit(model=task.build_model(0).double())
    with torch.no_grad():
        for theta in learned_init.theta:
            theta.add_(3.0)  # far from any random init
    learned = Biases(CrossEntropy(), SGD(lr=0.1), learned_init)
    trainer = MetaTrainer(SingleTask(task), learned, TaskLoss(), TruncatedUnroll(), device="cpu")
    _, states, _ = train_grid(trainer.ctx, baseline, task, 2, 5, [0.1])
    reference, _ = meta_test_run(trainer, baseline, task, 2, 5, None, "check")
    for name, value in reference.state.params.items():
        torch.testing.assert_close(states[0].params[name], value, rtol=1e-10, atol=1e-12)


def test_tuned_baseline_is_never_worse_on_validation_than_the_same_settings():
    task = tiny_task(n=96)
    lr, steps, seeds = 0.02, 30, 3
    trainer, biases = _trainer(task, SGD(lr=lr))
    lrs = lr_grid(lr)
    rows = [tune_seed(trainer, biases, i, steps, lrs) for i in range(seeds)]
    chosen = select(lrs, rows, "error")
    # the same-settings baseline, trained the ordinary (sequential) way
    same = []
    for i in range(seeds):
        run, _ = meta_test_run(trainer, biases, task, i, steps, None, "baseline")
        same.append(evaluate_split(run.model, run.state, task.val, task.kind))
    tuned_val = sum(r["val"][chosen]["error"] for r in rows) / seeds
    same_val = sum(m["error"] for m in same) / seeds
    assert tuned_val <= same_val
    at_preset = lrs.index(lr)
    for r, m in zip(rows, same):  # the grid's preset-rate point is that same run
        assert r["val"][at_preset]["loss"] == pytest.approx(m["loss"], rel=1e-9)
    assert lrs[chosen] != lr  # this task is under-trained at 0.02: the tuning matters


def test_grid_selection_reads_the_validation_split_only():
    task = tiny_task(n=96)
    trainer, biases = _trainer(task, SGD(lr=0.02))
    lrs = lr_grid(0.02)
    rows = [tune_seed(trainer, biases, i, 30, lrs) for i in range(2)]
    # the same runs with the test labels scrambled: test metrics change, nothing else
    scrambled = replace(task, test=Split(task.test.x, task.test.y.flip(0)))
    other, other_biases = _trainer(scrambled, SGD(lr=0.02))
    rows2 = [tune_seed(other, other_biases, i, 30, lrs) for i in range(2)]
    assert [r["val"] for r in rows] == [r["val"] for r in rows2]
    assert [r["test"] for r in rows] != [r["test"] for r in rows2]
    assert select(lrs, rows, "error") == select(lrs, rows2, "error")
    # and select() looks at `val` alone: a test split that prefers another rate is ignored
    fake = [
        {
            "val": [{"error": e, "loss": 1.0} for e in (0.3, 0.1, 0.2)],
            "test": [{"error": e, "loss": 1.0} for e in (0.0, 0.9, 0.9)],
            "diverged_at": [None] * 3,
        }
    ]
    assert select([1.0, 2.0, 3.0], fake, "error") == 1


def test_a_diverging_rate_is_recorded_and_never_chosen():
    task = tiny_task("regression", n=96)
    biases = Biases(MSE(), SGD(lr=0.05), RandomInit())
    trainer = MetaTrainer(SingleTask(task), biases, TaskLoss(), TruncatedUnroll(), device="cpu")
    rows = [tune_seed(trainer, biases, 0, 30, [0.05, 1e6])]
    assert rows[0]["diverged_at"][1] is not None and rows[0]["diverged_at"][0] is None
    assert not math.isfinite(rows[0]["val"][1]["mse"])
    assert select([0.05, 1e6], rows, "mse") == 0


@pytest.mark.parametrize("base", [SGD, Adam], ids=["sgd", "adam"])
@pytest.mark.parametrize("window", [1, 3])
def test_learned_lr_meta_gradient_matches_central_finite_differences(base, window):
    task = tiny_task(seed=2)
    spec = {"_component_": base.__name__.lower(), "lr": 0.05}
    rule = LearnedLR(spec, scale=1.3).double()
    biases = Biases(CrossEntropy(), rule, RandomInit())
    trainer = MetaTrainer(
        SingleTask(task),
        biases,
        TaskLoss(),
        TruncatedUnroll(window=window, horizon=window),
        device="cpu",
    )

    def meta_loss(log_scale: float) -> float:
        with torch.no_grad():
            rule.log_scale.fill_(log_scale)
        fresh = trainer.ctx.new_run("meta_train", 0)  # same seed: same init and batches
        return trainer.estimator.unroll(trainer.ctx, fresh)[0]

    centre, eps = math.log(1.3), 1e-5
    rule.log_scale.grad = None
    meta_loss(centre)  # accumulates ∂ meta-loss / ∂ log_scale into .grad
    analytic = rule.log_scale.grad.item()
    numeric = (meta_loss(centre + eps) - meta_loss(centre - eps)) / (2 * eps)
    assert analytic == pytest.approx(numeric, rel=1e-6)
    assert abs(analytic) > 1e-6  # a real signal, not two zeros
    assert rule.lr == pytest.approx(0.05 * math.exp(centre - eps))


BLOCK_KEYS = {"test", "test_std", "test_ci95", "n", "n_test", "per_seed", "settings"}
PAIRED_KEYS = {"mean_diff", "ci95", "p_value", "wins", "n"}
TINY = ["meta_test.steps=12", "meta_test.seeds=2", "logger.backends=[]", "device=cpu"]
FAMILIES = {
    "loss_learning": ("ml3/digits_mlp", ["meta_steps=2", "model.hidden=[8]"]),
    "search": (
        "taylorglo/digits_mlp",
        ["meta_steps=1", "estimator.fitness_steps=5", "estimator.searcher.population=4"],
    ),
    "few_shot": (
        "maml/digits_5w1s",
        [
            "meta_steps=2",
            "model.hidden=4",
            "estimator.meta_batch=2",
            "baseline.controls=[learned_lr]",
        ],
    ),
    "learned_optimizer": (
        "lo/mlp_none",
        [
            "task.datasets=[digits]",
            "task.widths=[[8]]",
            "task.meta_test.model.hidden=[8]",
            "optimizer.hidden=[4]",
            "meta_steps=2",
            "estimator.window=2",
            "estimator.horizon=4",
        ],
    ),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_summary_schema_of_every_preset_family(family, tmp_path):
    import learnreg

    preset, overrides = FAMILIES[family]
    summary = learnreg.run(preset, [*overrides, *TINY], out=tmp_path, progress=False)
    assert {"test", "test_std", "test_ci95", "n", "n_test"} <= set(summary) and summary["n"] == 2
    assert set(summary["baselines"]) == {"same_settings", "tuned", "learned_lr"}
    for name, block in summary["baselines"].items():
        assert set(block) >= BLOCK_KEYS, name
        assert block["n"] == 2 and len(block["per_seed"]) == 2 and block["n_test"] > 0
    assert summary["baseline"] == summary["baselines"]["tuned"]
    tuned = summary["baselines"]["tuned"]["settings"]
    assert len(tuned["grid"]) >= 7 and tuned["lr"] in tuned["grid"]
    assert [p["lr"] for p in tuned["points"]] == tuned["grid"]
    assert all({"val", "test", "diverged"} <= set(p) for p in tuned["points"])
    metric = "error" if "error" in summary["test"] else "mse"
    for name, block in summary["baselines"].items():
        d = summary["paired"][name][metric]
        assert set(d) >= PAIRED_KEYS
        learned = [r["learned"][metric] for r in summary["per_seed"]]
        base = [r[metric] for r in block["per_seed"]]
        assert d["mean_diff"] == pytest.approx(sum(learned) / 2 - sum(base) / 2)
    same = summary["baselines"]["same_settings"]["per_seed"]
    assert same == [r["baseline"] for r in summary["per_seed"]]
    assert (tmp_path / "controls" / "learned_lr" / "summary.json").is_file()


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if not k.endswith("seconds")}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


@pytest.mark.parametrize("where", ["tuning", "control"])
def test_a_run_killed_while_tuning_or_training_a_control_resumes_to_the_same_result(
    tmp_path, monkeypatch, where
):
    from conftest import Interrupt
    from test_runner import CONFIG

    import learnreg

    cfg = {**CONFIG, "baseline": {"controls": ["learned_lr"]}}
    reference = learnreg.run(cfg, out=tmp_path / "ref", progress=False)
    calls = {"n": 0}
    from learnreg.eval import baselines

    target = (baselines, "tune_seed") if where == "tuning" else (TruncatedUnroll, "estimate")
    original = getattr(*target)
    kill_at = 2 if where == "tuning" else CONFIG["meta_steps"] + 5  # inside the control's fit

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == kill_at:
            raise Interrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(*target, dying)
    with pytest.raises(Interrupt):
        learnreg.run(cfg, out=tmp_path / "run", progress=False)
    monkeypatch.setattr(*target, original)
    assert not (tmp_path / "run" / "summary.json").exists()
    resumed = learnreg.run(cfg, out=tmp_path / "run", progress=False)
    assert _without_timings(resumed) == _without_timings(reference)


def test_tune_learned_tunes_the_learned_side_on_the_same_grid(tmp_path):
    from test_runner import CONFIG

    import learnreg

    cfg = {**CONFIG, "baseline": {"tune": "learned"}}
    summary = learnreg.run(cfg, out=tmp_path, progress=False)
    side = summary["learned_tuned"]
    assert side["settings"]["grid"] == summary["baselines"]["tuned"]["settings"]["grid"]
    # the grid's point at the run's own rate is the learned meta-test run itself
    own = side["settings"]["grid"].index(CONFIG["optimizer"]["lr"])
    learned_test = [r["learned"]["error"] for r in summary["per_seed"]]
    point = side["settings"]["points"][own]["test"]["error"]
    assert point == pytest.approx(sum(learned_test) / len(learned_test), abs=1e-9)
    assert {"mean_diff", "ci95", "p_value", "wins", "n"} <= set(
        summary["paired"]["learned_tuned_vs_tuned"]["error"]
    )


def test_a_search_control_is_cmaes_over_the_step_size_with_the_search_budget(tmp_path):
    """A search has no meta-gradient: its control is CMA-ES over log(step size) with the
    search's population, generations, fitness runs and objective, and meta-tests the
    best candidate it found."""
    import json

    import yaml

    import learnreg

    overrides = ["meta_steps=2", "estimator.fitness_steps=5", "estimator.searcher.population=4"]
    summary = learnreg.run(
        "taylorglo/digits_mlp", [*overrides, *TINY], out=tmp_path, progress=False
    )
    control_dir = tmp_path / "controls" / "learned_lr"
    cfg = yaml.safe_load((control_dir / "config.yaml").read_text())
    estimator = cfg["estimator"]
    assert estimator["_component_"] == "evolution" and estimator["role"] == "optimizer"
    assert estimator["searcher"] == {
        "_component_": "cmaes",
        "population": 4,
        "sigma": 1.0,
        "start": "current",
    }
    assert estimator["fitness_steps"] == 5 and "filters" not in estimator
    assert cfg["meta_steps"] == 2 and cfg["objective"]["_component_"] == "task_error"
    history = json.loads((control_dir / "learned" / "search_history.json").read_text())
    assert [g["search/evaluated"] for g in history["generations"]] == [4.0, 4.0]
    (log_scale,) = json.loads(history["best"]["genome"])
    settings = summary["baselines"]["learned_lr"]["settings"]
    assert settings["meta_learned_scale"] == pytest.approx(math.exp(log_scale), rel=1e-3)
    assert settings["meta_learned_lr"] == pytest.approx(0.01 * math.exp(log_scale), rel=1e-3)


def test_a_rate_chosen_at_the_grids_end_is_flagged_as_possibly_under_tuned():
    from learnreg.eval import comparison

    lrs = [0.001, 0.01, 0.1]

    def seed(val_errors):
        points = [{"error": e, "loss": e} for e in val_errors]
        return {"val": points, "test": points, "diverged_at": [None] * 3, "tuned_on": "val"}

    low = comparison.tuned_block(lrs, [seed([0.1, 0.2, 0.3])] * 2, "error", 10, {})
    middle = comparison.tuned_block(lrs, [seed([0.2, 0.1, 0.3])] * 2, "error", 10, {})
    high = comparison.tuned_block(lrs, [seed([0.3, 0.2, 0.1])] * 2, "error", 10, {})
    assert low["settings"]["lr"] == 0.001 and low["settings"]["at_grid_edge"] == "lowest"
    assert middle["settings"]["at_grid_edge"] is None
    assert high["settings"]["at_grid_edge"] == "highest"
    assert "widen baseline.tune.grid" in comparison._label("tuned", low)
    assert "widen" not in comparison._label("tuned", middle)


def test_the_grid_loops_over_copies_only_for_convolutions_on_a_cpu():
    from learnreg.eval.grid_runs import vmap_is_faster
    from learnreg.models import MLP, SmallCNN

    cnn, mlp = SmallCNN((1, 28, 28), 10), MLP((4,), 3, [8])
    assert not vmap_is_faster(cnn, torch.device("cpu"))
    assert vmap_is_faster(mlp, torch.device("cpu"))
    assert vmap_is_faster(cnn, torch.device("cuda"))
