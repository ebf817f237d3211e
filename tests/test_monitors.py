"""Dead-loss detection and its policies; best-checkpoint selection; the AdaLFL network."""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_task

from learnreg import config
from learnreg.core.bias import Biases
from learnreg.core.inner import inner_step
from learnreg.core.objectives import TaskLoss
from learnreg.core.task import SingleTask, Split
from learnreg.core.trainer import MetaTrainer
from learnreg.errors import NumericalError
from learnreg.estimators.base import Estimate, Estimator, meta_step
from learnreg.eval.best_checkpoint import BestCheckpoint
from learnreg.eval.dead_loss import DeadLossMonitor, is_dead, loss_slopes
from learnreg.eval.meta_test import evaluate
from learnreg.experiment import build_biases, build_family
from learnreg.inits import RandomInit
from learnreg.losses import CrossEntropy, LossRole, NeuralLoss
from learnreg.optimizers import SGD


class ListLogger:
    def __init__(self):
        self.records = []

    def log(self, metrics, **axes):
        self.records.append({**axes, **metrics})

    def log_table(self, *a, **k): ...

    def log_artifact(self, *a, **k): ...


def dead_softplus_loss(classes: int = 3) -> NeuralLoss:
    """A Softplus-output loss saturated to ~0 for target probabilities above ~0.3: with an
    identity hidden layer (gamma=1) the pre-activation is 1000 (0.25 y - p)."""
    loss = NeuralLoss(
        "classification",
        classes,
        hidden=(1,),
        activation="smooth_leaky_relu",
        gamma=1.0,
        output="softplus",
    ).double()
    kill(loss)
    return loss


@torch.no_grad()
def kill(loss: NeuralLoss) -> None:
    loss.net[0].weight.copy_(torch.tensor([[-1000.0, 250.0]]))
    loss.net[2].weight.fill_(1.0)


def test_a_saturated_softplus_loss_is_dead_and_cross_entropy_is_not():
    dead = dead_softplus_loss()
    slopes = loss_slopes(dead, 3, p_min=0.3)
    assert is_dead(slopes) and slopes["slope_above"] < 1e-3 * slopes["slope_peak"]
    # ... and the base gradient really vanishes once p_target > 0.3:
    logits = torch.tensor([[2.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(dead(logits, torch.tensor([0])), logits)
    assert logits.softmax(-1)[0, 0] > 0.7 and grad.abs().max() < 1e-15
    assert not is_dead(loss_slopes(CrossEntropy(), 3, p_min=0.3))
    healthy = NeuralLoss("classification", 3, activation="smooth_leaky_relu", output="none")
    assert not is_dead(loss_slopes(healthy, 3))


class KillAt(Estimator):
    """A constructed meta-training run: meta-step ``at`` makes the loss dead."""

    needs_outer = False

    def __init__(self, at: int):
        self.at, self.steps = at, 0

    def estimate(self, ctx):
        self.steps += 1
        loss = copy.deepcopy(ctx.biases.loss)
        with torch.no_grad():
            for p in loss.parameters():
                p.add_(0.01)  # the meta-parameters move every step
        if self.steps == self.at:
            kill(loss)
        return Estimate(metrics={"loss": 0.0}, states={"loss": loss.state_dict()})


def _trainer(policy: str, logger=None, at: int = 3) -> MetaTrainer:
    task = tiny_task()
    loss = NeuralLoss(
        "classification",
        3,
        hidden=(1,),
        activation="smooth_leaky_relu",
        gamma=1.0,
        output="softplus",
    ).double()
    biases = Biases(loss, SGD(lr=0.1), RandomInit())
    monitor = DeadLossMonitor(policy=policy, every=1, max_restarts=2)
    return MetaTrainer(
        SingleTask(task),
        biases,
        TaskLoss(),
        KillAt(at),
        device="cpu",
        logger=logger,
        monitors=[monitor],
    )


def test_dead_loss_is_logged_and_warned_under_warn():
    logger = ListLogger()
    trainer = _trainer("warn", logger)
    with pytest.warns(UserWarning, match="learned loss is dead at meta-train step 3") as caught:
        trainer.fit(4, progress=False)
    flags = [r["meta/dead_loss"] for r in logger.records]
    assert flags == [0.0, 0.0, 1.0, 1.0]  # the dead loss stays in place
    assert sum("is dead" in str(w.message) for w in caught) == 1  # warned once, logged twice


def test_restart_restores_the_last_healthy_meta_parameters():
    logger = ListLogger()
    trainer = _trainer("restart", logger)
    trainer.fit(2, progress=False)
    healthy = {k: v.clone() for k, v in trainer.biases.state_dict().items()}
    with pytest.warns(UserWarning, match="restarting from the last healthy"):
        trainer.fit(3, progress=False)
    after = trainer.biases.state_dict()
    assert all(torch.equal(after[k], healthy[k]) for k in healthy)
    assert [r["meta/dead_loss"] for r in logger.records] == [0.0, 0.0, 1.0]
    trainer.fit(4, progress=False)  # training goes on from there, healthy again
    assert logger.records[-1]["meta/dead_loss"] == 0.0


def test_stop_raises_a_clear_error():
    trainer = _trainer("stop")
    with pytest.raises(NumericalError, match=r"dead at meta-train step 3.*loss.output=none"):
        trainer.fit(5, progress=False)
    assert trainer.meta_step == 3


def test_restart_escalates_to_stop_when_the_loss_keeps_dying():
    class AlwaysKill(KillAt):
        def estimate(self, ctx):
            self.steps += 1
            loss = copy.deepcopy(ctx.biases.loss)
            if self.steps >= self.at:
                kill(loss)
            return Estimate(metrics={"loss": 0.0}, states={"loss": loss.state_dict()})

    trainer = _trainer("restart")
    trainer.estimator = AlwaysKill(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(NumericalError, match="still dead after 2 restarts"):
            trainer.fit(10, progress=False)


class OnlineKill(Estimator):
    """A constructed online meta-test: plain inner steps; inner step ``at`` kills the loss."""

    online = True

    def __init__(self, at: int):
        self.at = at

    def attach(self, run):
        self.run = run

    def estimate(self, ctx):
        run = self.run
        with torch.no_grad():
            run.state, loss = inner_step(
                run.model, run.state, run.next_train(), ctx.biases.loss, ctx.biases.optimizer
            )
        states = None
        if run.state.step == self.at:
            killed = copy.deepcopy(ctx.biases.loss)
            kill(killed)
            states = {"loss": killed.state_dict()}
        return Estimate(metrics={"inner_loss": float(loss)}, states=states)


@pytest.mark.parametrize("policy", ["warn", "restart", "stop"])
def test_dead_loss_is_detected_during_online_meta_test(policy):
    logger = ListLogger()
    trainer = _trainer(policy, logger)
    adapt = OnlineKill(at=3)
    if policy == "stop":
        with pytest.raises(NumericalError, match="meta-test seed 0 step 3"):
            evaluate(trainer, 6, 1, adapt=adapt, progress=False)
        return
    with pytest.warns(UserWarning, match="meta-test seed 0 step 3"):
        per_seed = evaluate(trainer, 6, 1, adapt=adapt, progress=False)
    flags = [r["meta/dead_loss"] for r in logger.records if "meta/dead_loss" in r]
    assert flags[:3] == [0.0, 0.0, 1.0]
    # warn leaves the dead loss in place; restart restores the healthy one (step 3 is then
    # killed no more: the constructed kill happens once)
    assert flags[3:] == ([1.0, 1.0, 1.0] if policy == "warn" else [0.0, 0.0, 0.0])
    assert math.isfinite(per_seed[0]["learned"]["error"])


# --- best-checkpoint selection ------------------------------------------------------------


class NoTest(Split):
    """A test split that fails the test if anything reads it."""

    def __init__(self):
        pass

    def __len__(self):
        return 10

    def to(self, device):
        return self

    def __getattribute__(self, name):
        if name in ("x", "y"):
            raise AssertionError("the test split was read during meta-training")
        return object.__getattribute__(self, name)


class Scripted(Estimator):
    """A constructed run: meta-step k sets the loss to a scripted scale (bad, good, bad)."""

    needs_outer = False
    scales = {1: 0.0, 2: 1.0, 3: 0.0, 4: 0.0}

    def __init__(self):
        self.steps = 0

    def estimate(self, ctx):
        self.steps += 1
        scale = torch.tensor(self.scales[self.steps], dtype=torch.float64)
        return Estimate(metrics={"loss": 0.0}, states={"loss": {"scale": scale}})

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state, ctx):
        self.steps = state["steps"]


class ScaledCE(LossRole):
    """Cross-entropy times a meta-parameter: scale 0 never trains the model."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.0, dtype=torch.float64))

    def forward(self, pred, target):
        return self.scale * F.cross_entropy(pred, target)


def test_best_checkpoint_keeps_the_best_validated_meta_parameters_and_never_reads_test():
    base = tiny_task(n=96)

    def learnable(split):  # labels a function of the inputs, so training helps
        return Split(split.x, split.x[:, :3].argmax(-1))

    task = replace(base, train=learnable(base.train), val=learnable(base.val), test=NoTest())
    logger = ListLogger()
    biases = Biases(ScaledCE(), SGD(lr=0.5), RandomInit())
    selection = BestCheckpoint(every=0.25, steps=30)
    trainer = MetaTrainer(
        SingleTask(task),
        biases,
        TaskLoss(),
        Scripted(),
        device="cpu",
        logger=logger,
        monitors=[selection],
    )
    with pytest.raises(AssertionError, match="test split was read"):
        _ = task.test.x  # the guard works
    trainer.fit(4, progress=False)
    values = [r["meta/val_metric"] for r in logger.records]
    assert len(values) == 4 and values[1] < min(values[0], values[2], values[3])
    assert selection.best_step == 2 and float(biases.loss.scale) == 1.0  # not the last (0.0)
    # the selection's own figure is the validation error of a run with the chosen loss
    assert selection.best_value == pytest.approx(values[1])


def test_best_checkpoint_survives_a_checkpoint_and_resume(tmp_path):
    from learnreg.tracking import load_checkpoint, save_checkpoint

    base = tiny_task(n=96)

    def learnable(split):
        return Split(split.x, split.x[:, :3].argmax(-1))

    task = SingleTask(replace(base, train=learnable(base.train), val=learnable(base.val)))

    def trainer():
        biases = Biases(ScaledCE(), SGD(lr=0.5), RandomInit())
        return MetaTrainer(
            task,
            biases,
            TaskLoss(),
            Scripted(),
            device="cpu",
            monitors=[BestCheckpoint(every=0.25, steps=30)],
        )

    straight = trainer()
    straight.target_meta_steps = 4
    first = trainer()
    first.target_meta_steps = 4  # interrupted after 2 of 4 meta-steps
    while first.meta_step < 2:
        meta_step(first.ctx, first.estimator)
        first.meta_step += 1
        for monitor in first.monitors:
            monitor.after_meta_step(first)
    save_checkpoint(tmp_path / "t.pt", first.state_dict())
    resumed = trainer()
    resumed.load_state_dict(load_checkpoint(tmp_path / "t.pt"))
    resumed.fit(4, progress=False)
    straight.fit(4, progress=False)
    a, b = straight.monitors[0], resumed.monitors[0]
    assert (a.best_step, a.best_value) == (b.best_step, b.best_value) and a.best_step == 2
    assert float(resumed.biases.loss.scale) == float(straight.biases.loss.scale) == 1.0


def test_best_checkpoint_interval_is_a_tenth_and_includes_the_last_step():
    selection = BestCheckpoint(every=0.1)
    assert selection.interval(500) == 50 and selection.interval(5) == 1


# --- presets -----------------------------------------------------------------------------


def test_adalfl_preset_network_is_linear_at_the_output_and_averages_over_classes():
    cfg = config.load("adalfl/digits_mlp")
    loss = build_biases(cfg, build_family(cfg).representative()).loss.double()
    assert isinstance(loss.net[-1], torch.nn.Linear)  # no output activation
    torch.manual_seed(1)
    logits, target = torch.randn(5, 10, dtype=torch.float64), torch.randint(0, 10, (5,))
    w1, w2, w3 = (m.weight for m in loss.net if isinstance(m, torch.nn.Linear))

    def phi(x):  # smooth leaky ReLU, gamma 0.25, beta 3
        return 0.25 * x + 0.75 * torch.log1p(torch.exp(3.0 * x)) / 3.0

    p, onehot = logits.softmax(-1), F.one_hot(target, 10).double()
    total = 0.0
    for n in range(5):
        terms = [
            phi(phi(torch.stack([p[n, c], onehot[n, c]]) @ w1.T) @ w2.T) @ w3.T for c in range(10)
        ]
        total += sum(terms) / 10  # mean over classes
    torch.testing.assert_close(loss(logits, target), (total / 5).squeeze())
    before = loss(logits, target)
    with torch.no_grad():
        w3.mul_(-1)  # a linear output negates with its last layer (a Softplus could not)
    torch.testing.assert_close(loss(logits, target), -before)


def test_ml3_preset_keeps_its_softplus_sum_and_xavier_init():
    cfg = config.load("ml3/digits_mlp")
    loss = build_biases(cfg, build_family(cfg).representative()).loss
    assert isinstance(loss.net[-1], torch.nn.Softplus) and loss.aggregation == "sum"
    assert cfg["loss"]["init"] == "xavier_uniform" and cfg["best_checkpoint"]["enabled"]
