"""Coordinatewise learned update rules, applied to every parameter of a model at once.

A :class:`FlatRule` sees the model's parameters as one flat vector (all tensors
flattened and concatenated) and computes the update of every coordinate in one batched
call: its per-coordinate state lives in flat "slots" of shape ``(*slot_shape, n)``,
coordinates last, so every elementwise operation runs over long contiguous rows.
The same two methods serve both paths:

* :meth:`FlatRule.forward`, the optimizer-role contract of the functional inner loop,
  out of place and differentiable with respect to the rule's meta-parameters;
* :meth:`FlatRule.apply_flat`, the graph-free path of
  :class:`learnreg.optim.LearnedOptimizer`, in place on the state and in chunks of
  ``chunk_size`` coordinates so the rule's activations stay in cache; with
  ``compile=True`` each chunk runs through one graph compiled by ``torch.compile`` (the
  per-coordinate features and moment updates fused into a few loops around the rule's
  matrix products; an eager fallback where compilation fails).

Per-tensor statistics a rule needs (a parameter tensor's RMS...) are computed by
:meth:`FlatRule.prepare` over the whole vector before the chunks, with segment
reductions rather than a loop over tensors.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from learnreg.core.compiled import graph_free
from learnreg.optimizers.base import OptimizerRole

Params = dict[str, Tensor]
State = dict[str, Any]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Rules compute in float32 at least (bfloat16/float16 parameters), float64 if given."""
    return torch.promote_types(dtype, torch.float32)


def segment_mean(values: Tensor, sizes: list[int] | Tensor) -> Tensor:
    """Mean of ``values`` over each consecutive segment of the given sizes, expanded back
    to one value per coordinate (differentiable; one kernel each way)."""
    lengths = torch.as_tensor(sizes, device=values.device)
    means = torch.segment_reduce(values, "mean", lengths=lengths, axis=0)
    return torch.repeat_interleave(means, lengths, dim=0, output_size=values.shape[0])


def _chunk_update(rule, grad, param, slots, aux, step, where):
    return rule.update(grad, param, slots, aux, step, where)


class FlatRule(OptimizerRole):
    """Base of coordinatewise rules (subclasses: the L2L LSTM, the MLP rule, Meta-SGD).

    Subclasses define :meth:`slots` (per-coordinate state shapes), :meth:`update` (the
    rule on a range of coordinates) and optionally :meth:`prepare`.

    Attributes:
        chunk_size: coordinates per chunk in :meth:`apply_flat` on the CPU (None: all at
            once), sized so the rule's activations stay in cache.
        gpu_chunk_factor: on a GPU the default chunk is this many times longer: there
            kernel launches, not the cache, bound a chunk's time (32k-coordinate chunks
            made a 10M-parameter step ~300 launches of each kernel).
        nominal_lr: the rule's own step size, which scales decoupled weight decay in
            :class:`~learnreg.optim.LearnedOptimizer` (as AdamW's learning rate does).
    """

    chunk_size: int | None = 32768
    gpu_chunk_factor: int = 128
    nominal_lr: float = 1.0

    def slots(self) -> dict[str, tuple[int, ...]]:
        """Per-coordinate state: name -> leading shape (``()`` for one number); a slot is
        stored as ``(*shape, n)``."""
        return {}

    def prepare(self, grad: Tensor, param: Tensor, sizes: list[int]) -> dict[str, Tensor]:
        """Auxiliary per-coordinate tensors (length n) computed over the whole vector."""
        return {}

    def update(
        self,
        grad: Tensor,
        param: Tensor,
        slots: dict[str, Tensor],
        aux: dict[str, Tensor],
        step: Tensor,
        where: slice,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The rule on coordinates ``where`` of the flat vector.

        Args:
            grad, param: the gradient and parameter values there (compute dtype).
            slots: the state slots there, each ``(*shape, len(where))``.
            aux: :meth:`prepare`'s tensors there.
            step: the step being taken (1 for the first), a 0-dim tensor.
            where: which coordinates these are (rules with per-coordinate
                meta-parameters, such as Meta-SGD, index them with it).

        Returns:
            The update (added to the parameters) and the new slots, both out of place.
        """
        raise NotImplementedError

    def check_shapes(self, shapes: list[list[int]]) -> None:
        """Raise when the rule cannot update parameters of these shapes (rules with
        per-coordinate meta-parameters belong to one architecture)."""

    # -- the optimizer-role contract (functional, differentiable) ----------------------
    def init(self, params: Params) -> State:
        values = list(params.values())
        self.check_shapes([list(p.shape) for p in values])
        n = sum(p.numel() for p in values)
        like = values[0]
        return self.init_flat(n, compute_dtype(like.dtype), like.device)

    def init_flat(self, n: int, dtype: torch.dtype, device) -> State:
        """Fresh state for ``n`` coordinates: a step counter and zeroed slots."""
        return {
            "step": torch.zeros((), dtype=torch.int64, device=device),
            "slots": {
                name: torch.zeros((*shape, n), dtype=dtype, device=device)
                for name, shape in self.slots().items()
            },
        }

    def forward(
        self, grads: Params, state: State, params: Params, inplace: bool = False
    ) -> tuple[Params, State]:
        names = list(grads)
        sizes = [grads[k].numel() for k in names]
        dtype = compute_dtype(grads[names[0]].dtype)
        grad = torch.cat([grads[k].reshape(-1) for k in names]).to(dtype)
        param = torch.cat([params[k].reshape(-1) for k in names]).to(dtype)
        step = state["step"] + 1
        aux = self.prepare(grad, param, sizes)
        flat, slots = self.update(grad, param, state["slots"], aux, step, slice(0, grad.numel()))
        pieces = flat.split(sizes)
        updates = {k: u.view_as(grads[k]).to(grads[k].dtype) for k, u in zip(names, pieces)}
        return updates, {"step": step, "slots": slots}

    # -- the graph-free path (LearnedOptimizer) ----------------------------------------
    @torch.no_grad()
    def apply_flat(
        self,
        grad: Tensor,
        param: Tensor,
        state: State,
        sizes: list[int],
        chunk_size=None,
        compile: bool = False,
    ) -> Tensor:
        """The update of every coordinate, advancing ``state`` in place.

        Args:
            grad, param: flat vectors (compute dtype).
            state: from :meth:`init_flat`; its slots and step are updated in place.
            sizes: the sizes of the tensors concatenated into the vectors.
            chunk_size: coordinates per chunk (default: :attr:`chunk_size`, times
                :attr:`gpu_chunk_factor` off the CPU).
            compile: run each chunk through ``torch.compile`` (equal to the eager rule
                to float rounding; eager where compilation fails).
        """
        n = grad.numel()
        default = self.chunk_size
        if default and grad.device.type != "cpu":
            default *= self.gpu_chunk_factor
        chunk = chunk_size or default or n
        step = state["step"] + 1
        aux = self.prepare(grad, param, sizes)
        out = torch.empty_like(grad)
        rule = self._chunk_fn(compile)
        for start in range(0, n, chunk):
            where = slice(start, min(start + chunk, n))
            update, slots = rule(
                grad[where],
                param[where],
                {k: v[..., where] for k, v in state["slots"].items()},
                {k: v[..., where] for k, v in aux.items()},
                step,
                where,
            )
            out[where] = update
            for name, value in slots.items():
                state["slots"][name][..., where] = value
        state["step"].copy_(step)
        return out

    def _chunk_fn(self, compile: bool):
        """The chunk update: eager, or through ``torch.compile`` with the eager fallback
        of :func:`learnreg.core.compiled.graph_free` (dynamo guards on the rule's
        structure and the chunk's shape, so rules of one kind and size share a graph; a
        chunked step has two: full chunks and the last one)."""
        if not compile:
            return self.update
        run = graph_free(_chunk_update)
        return lambda *args: run(self, *args)

    def weights(self, tensor: Tensor, dtype: torch.dtype) -> Tensor:
        """A meta-parameter in the compute dtype (differentiable cast)."""
        return tensor if tensor.dtype == dtype else tensor.to(dtype)
