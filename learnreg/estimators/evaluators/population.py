"""A population of candidates trained side by side, each with its own copy of one base model.

Every member is a :class:`~learnreg.core.bias.Biases` that differs from the others only in
the searched role. The members' inner states (model parameters, buffers, optimizer
states) are stacked on a leading dimension and advance together, one step for all:

* **stacked**: candidates that differ only in their values (TaylorGLO's coefficient
  vectors, a schedule's knots, an init) are one template evaluated at their stacked
  meta-parameter values: the ordinary :func:`~learnreg.core.inner.inner_step` under
  :func:`~learnreg.core.metaparams.call_at`, vmapped over (values, state);
* **mixed**: candidates of different structure (EvoMAL's trees) still share the vmapped
  model; the searched role is called for each member in turn, the other roles vmapped;
* **plain**: a group of one is a plain run of the functional inner loop (the reference).

A member that diverges produces NaNs in its own slice only. Gradients reach each
candidate's own parameters through every path (EvoMAL's local search needs them).
"""

from __future__ import annotations

import optree
import torch
from torch.func import vmap

from learnreg.core import population
from learnreg.core.bias import Biases
from learnreg.core.functional import call_stacked, plain_autograd_allowed, value_and_grad
from learnreg.core.inner import InnerState, frozen_names, init_state, inner_step
from learnreg.core.metaparams import call_at


def _plain(state: InnerState) -> tuple:
    return state.params, state.buffers, state.opt_state


class Population:
    """The members' training as one run; states are ``(params, buffers, opt_state)``.

    Args:
        members: one :class:`~learnreg.core.bias.Biases` per candidate.
        role: the role in which they differ.
    """

    def __init__(self, members: list[Biases], role: str):
        self.members, self.role, self.template = members, role, members[0]
        self.candidates = [m.roles()[role] for m in members]
        if len(members) == 1:
            self.kind = "plain"
        else:
            self.kind = "stacked" if population.modules_stackable(self.candidates) else "mixed"

    def values(self) -> dict:
        """The candidates' parameters stacked, as values of the searched role."""
        return {self.role: population.stack_parameters(self.candidates)}

    def init(self, model, task) -> tuple:
        """Every member's state at step 0 (its init role's parameters, its optimizer's state)."""
        if self.kind == "plain":
            return _plain(init_state(model, self.template.init, self.template.optimizer, task))
        if self.kind == "stacked":
            b = self.template

            def one(values):
                return _plain(call_at(b, values, init_state, model, b.init, b.optimizer, task))

            state = vmap(one, randomness="different")(self.values())
        else:
            state = population.stack(
                [_plain(init_state(model, m.init, m.optimizer, task)) for m in self.members]
            )
        # vmap broadcasts what no member changed; steps write buffers (BatchNorm) in place
        return optree.tree_map(lambda t: t.contiguous(), state)

    def step(self, model, state: tuple, batch) -> tuple:
        """One inner step of every member on the same batch."""
        if self.kind == "plain":
            b = self.template
            return _plain(inner_step(model, InnerState(*state), batch, b.loss, b.optimizer)[0])
        if self.kind == "mixed" or plain_autograd_allowed():
            return self._batched_step(model, state, batch)
        b = self.template

        def one(values, member_state):
            new, _ = call_at(
                b, values, inner_step, model, InnerState(*member_state), batch, b.loss, b.optimizer
            )
            return _plain(new)

        return vmap(one, randomness="different")(self.values(), state)

    def _batched_step(self, model, state: tuple, batch) -> tuple:
        """:func:`~learnreg.core.inner.inner_step` with the model vmapped over the members
        and each role called for every member (:meth:`_each`); the gradient is taken
        outside ``vmap``, of the members' summed losses (each member's own gradient), so a
        graph-free step takes it by plain autograd (:func:`~learnreg.core.functional.value_and_grad`)."""
        (params, buffers, opt_state), (x, y) = state, batch
        frozen = frozen_names(model)
        fixed = {k: v for k, v in params.items() if k in frozen}

        def total(adapted):
            preds = call_stacked(model, {**adapted, **fixed}, buffers, x)
            return self._loss_values(preds, y).sum()

        adapted = {k: v for k, v in params.items() if k not in frozen}
        grads, _ = value_and_grad(total, adapted)
        updates, opt_state = self._each(
            "optimizer", lambda opt, g, s, p: opt(g, s, p), grads, opt_state, adapted
        )
        params = {k: p if k in frozen else p + updates[k] for k, p in params.items()}
        return params, buffers, opt_state

    def _loss_values(self, preds, target):
        """Every member's loss on its own predictions; candidate losses whose class offers
        ``population_values(losses, preds, target)`` compute them together (elementwise
        losses share one softmax, and those of one ``population_key`` one evaluation),
        else as :meth:`_each` does (vmapped when stacked, one after another when mixed)."""
        first = self.candidates[0]
        together = getattr(first, "population_values", None)
        groups = getattr(first, "population_key", lambda: None)() is not None
        if self.role == "loss" and together is not None and (groups or self.kind == "mixed"):
            return together(self.candidates, preds, target)
        return self._each("loss", lambda loss, pred: loss(pred, target), preds)

    def _each(self, role: str, fn, *args):
        """``fn(member's role module, *member's args)`` for every member (args stacked)."""
        if role != self.role:  # the same module for everyone
            module = self.template.roles()[role]
            # coordinatewise on tensors of the parameters' shapes: stacked is the same
            # (not with a per-member scalar such as Adam's step count, shape (P,))
            if getattr(module, "elementwise", False) and all(
                t.dim() > 1 for t in optree.tree_leaves(args) if isinstance(t, torch.Tensor)
            ):
                return fn(module, *args)
            return vmap(lambda *a: fn(module, *a), randomness="different")(*args)
        if self.kind == "stacked":  # one template at the members' stacked values
            b, module = self.template, self.template.roles()[role]

            def one(values, *a):
                return call_at(b, {role: values}, fn, module, *a)

            return vmap(one, randomness="different")(self.values()[role], *args)
        parts = population.unstack(args, len(self.members))
        return population.stack([fn(m.roles()[role], *a) for m, a in zip(self.members, parts)])

    def objective(self, objective, model, state: tuple, batch, task) -> torch.Tensor:
        """The meta-objective of every member, shape ``(P,)``."""
        params, buffers, _ = state
        if self.kind == "plain":
            return objective(model, InnerState(params, buffers, None), batch, task).reshape(1)

        def one(p, b):
            return objective(model, InnerState(p, b, None), batch, task)

        return vmap(one, randomness="different")(params, buffers)
