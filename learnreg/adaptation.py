"""Few-shot biases in your own loop: load a run's learned roles and adapt your model on
your support set with them, as the run's own meta-test does.

:func:`load_biases` rebuilds a run directory's loss, optimizer and init (the learned ones
from ``learned/``, the fixed ones from its config); :func:`adapt` trains a copy of a model
on a support set for a few steps with them and returns it; :func:`adapt_state` is the
functional form (parameters in, parameters out, differentiable when asked), for a MAML
outer loop of your own.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import torch
from torch import Tensor, nn

from learnreg.core.bias import Biases
from learnreg.core.inner import InnerState, init_state, inner_step
from learnreg.core.task import BatchStream, Split, Task
from learnreg.errors import CheckpointError


def load_biases(run_dir: str | Path, device: str | torch.device = "cpu") -> Biases:
    """The loss, optimizer and init a run directory meta-learned.

    Learned roles come from ``run_dir/learned/<role>`` (``<role>_offline`` in a run with
    online adaptation): the meta-parameters at the end of meta-training, which every
    meta-test run starts from. The others are rebuilt from the
    run's ``config.yaml``. Modules the run recorded under ``imports`` are imported first
    (see :mod:`learnreg.imports`).

    Args:
        run_dir: a run directory written by ``learnreg run`` (meta-training finished).
        device: where the roles' tensors go.

    Returns:
        :class:`~learnreg.core.bias.Biases` (``.loss``, ``.optimizer``, ``.init``).

    Raises:
        CheckpointError: not a run directory, or meta-training has not finished.
    """
    from learnreg import config as configlib
    from learnreg.experiment import build_biases, build_family
    from learnreg.imports import import_recorded
    from learnreg.tracking.export import load_bias

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(f"{run_dir} is not a run directory (no config.yaml)")
    import_recorded(run_dir)
    cfg = configlib.load(run_dir / "config.yaml")
    biases = build_biases(cfg, build_family(cfg).representative())
    for role in biases.learned_roles():
        path = run_dir / "learned" / role
        if not path.with_suffix(".json").is_file():  # a run with online adaptation (AdaLFL)
            path = run_dir / "learned" / f"{role}_offline"
        if not path.with_suffix(".json").is_file():
            raise CheckpointError(
                f"{path}.json not found: the run has not finished meta-training; "
                "re-run `learnreg run` on it to finish"
            )
        setattr(biases, role, load_bias(path, role=role, device=str(device)))
    return biases.to(device)


def adapt_state(
    model: nn.Module,
    support_x: Tensor,
    support_y: Tensor,
    biases: Biases,
    steps: int,
    batch_size: int | None = None,
    seed: int = 0,
    task: Task | None = None,
    create_graph: bool = False,
) -> InnerState:
    """Functional adaptation: ``steps`` inner steps from the init role's parameters.

    Args:
        model: the base model, used as a function of its parameters (it is not changed;
            with a random init, its current parameters are the starting point).
        support_x, support_y: the support set.
        biases: the roles (:func:`load_biases`).
        steps: inner steps.
        batch_size: support examples per step (None: all of them, as a few-shot
            meta-test does), drawn in the order a seeded :class:`BatchStream` gives.
        seed: the batch order's seed.
        task: the task passed to the init role (None: one made of the support set;
            task-conditioned inits such as FiLM read its ``train`` split).
        create_graph: keep the graph through every step, so that a loss of the result
            backpropagates into the roles' meta-parameters (a MAML outer loop).

    Returns:
        The final :class:`~learnreg.core.inner.InnerState` (``.params``, ``.buffers``).
    """
    if task is None:
        support = Split(support_x, support_y)
        classification = not support_y.is_floating_point()
        task = Task(
            "support",
            "classification" if classification else "regression",
            support,
            support,
            support,
            num_classes=int(support_y.max()) + 1 if classification else support_y.shape[-1],
            batch_size=len(support_x),
        )
    batches = BatchStream(task.train, batch_size or len(task.train), seed)
    grad_mode = contextlib.nullcontext() if create_graph else torch.no_grad()
    with grad_mode:
        state = init_state(model, biases.init, biases.optimizer, task)
        for _ in range(steps):
            state, _ = inner_step(model, state, batches.next(), biases.loss, biases.optimizer)
    return state


def adapt(
    model: nn.Module,
    support_x: Tensor,
    support_y: Tensor,
    biases: Biases,
    steps: int,
    batch_size: int | None = None,
    seed: int = 0,
    task: Task | None = None,
) -> nn.Module:
    """A copy of ``model`` adapted to a support set with learned biases (frozen).

    The same steps as a run's meta-test without online adaptation: the init role's
    parameters, then ``steps`` updates of the optimizer role on the loss role's gradient.

    Args:
        model: your model; its architecture must be the one the run meta-learned its
            init for (a learned init has the run's parameter names and shapes).
        support_x, support_y: the support set (labels ``0..ways-1`` for classification).
        biases: the roles (:func:`load_biases`).
        steps: inner steps.
        batch_size, seed, task: as in :func:`adapt_state`.

    Returns:
        A new module with the adapted parameters and buffers; ``model`` is unchanged.
    """
    state = adapt_state(model, support_x, support_y, biases, steps, batch_size, seed, task)
    adapted = copy.deepcopy(model)
    with torch.no_grad():
        for name, tensor in [*adapted.named_parameters(), *adapted.named_buffers()]:
            tensor.copy_(state.params[name] if name in state.params else state.buffers[name])
    return adapted
