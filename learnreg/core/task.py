"""Tasks: a model to build plus disjoint train / val / test data, and families of them.

A :class:`Task` serves ``train`` batches to the inner loop, ``val`` batches to the
meta-objective and a ``test`` split used only for the final report. Data lives in memory
as tensors on the run's device, so a batch is one ``index_select``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from torch import Tensor, nn

from learnreg.errors import ConfigError, DataError, ShapeError

Kind = Literal["classification", "regression"]


@dataclass
class Split:
    """Inputs and targets of one data split."""

    x: Tensor
    y: Tensor

    def __post_init__(self):
        # shape[0], not len(): Tensor.__len__ is a Python-level call, and a meta-batch
        # builds a few splits per task every meta-step
        if self.x.shape[0] != self.y.shape[0]:
            raise ShapeError(
                f"split has {len(self.x)} inputs but {len(self.y)} targets; they must align row by row"
            )

    def __len__(self) -> int:
        return self.x.shape[0]

    def to(self, device) -> Split:
        if self.x.device == self.y.device == torch.device(device):
            return self  # already there: no copy (tensors are never written in place)
        return Split(self.x.to(device), self.y.to(device))


@dataclass
class Task:
    """One learning problem.

    Attributes:
        name: short identifier (``"digits"``).
        kind: ``"classification"`` (integer targets) or ``"regression"`` (float targets).
        train, val, test: disjoint splits.
        num_classes: number of classes (classification) or output width (regression).
        batch_size: inner-loop batch size.
        model_fn: builds a fresh model for this task (set from the run's ``model`` section).
    """

    name: str
    kind: Kind
    train: Split
    val: Split
    test: Split
    num_classes: int
    batch_size: int = 64
    model_fn: Callable[[], nn.Module] | None = field(default=None, repr=False)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    @property
    def out_features(self) -> int:
        return self.num_classes

    def to(self, device) -> Task:
        # each split is asked itself: no copy when it is there, and a guarded test split
        # is never read; a split under two names (an episode's query set is its val and
        # its test split) is asked once and stays one split
        train, val = self.train.to(device), self.val.to(device)
        test = val if self.test is self.val else self.test.to(device)
        if train is self.train and val is self.val and test is self.test:
            return self  # already there (episodes are drawn on the CPU, the usual device)
        return replace(self, train=train, val=val, test=test)

    def build_model(self, seed: int) -> nn.Module:
        """A freshly initialised model; the global RNG is left untouched."""
        if self.model_fn is None:
            raise ConfigError(f"task {self.name!r} has no model; set the run's `model` section")
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only (models are built on the CPU): torch.manual_seed also
            # queues a CUDA seeding call, which costs milliseconds per model
            torch.random.default_generator.manual_seed(seed)
            return self.model_fn()

    def stream(
        self, split: str = "train", seed: int = 0, batch_size: int | None = None
    ) -> BatchStream:
        return BatchStream(getattr(self, split), batch_size or self.batch_size, seed)


class BatchStream:
    """Endless shuffled mini-batches over a split, resumable from its ``state_dict``.

    Each epoch is a fresh permutation from a private generator, so two streams with the
    same seed yield identical batches, and a restored stream continues exactly.
    """

    def __init__(self, split: Split, batch_size: int, seed: int = 0):
        if len(split) == 0:
            raise DataError("cannot stream batches from an empty split; check the split sizes")
        self.split = split
        self.batch_size = min(batch_size, len(split))
        self.generator = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(len(split), generator=self.generator)
        self.pos = 0

    def next_indices(self) -> Tensor:
        """The rows of the next batch (on the CPU); advances the stream like :meth:`next`."""
        if self.pos + self.batch_size > self.perm.shape[0]:  # drop the ragged tail, start an epoch
            self.perm = torch.randperm(len(self.split), generator=self.generator)
            self.pos = 0
        idx = self.perm[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def next(self) -> tuple[Tensor, Tensor]:
        idx = self.next_indices().to(self.split.x.device)
        return self.split.x.index_select(0, idx), self.split.y.index_select(0, idx)

    def take(self, n: int) -> tuple[Tensor, Tensor]:
        """The next ``n`` batches stacked, ``(n, batch_size, ...)``: the same batches as
        ``n`` calls of :meth:`next`, gathered with one ``index_select`` per tensor."""
        idx = torch.cat([self.next_indices() for _ in range(n)]).to(self.split.x.device)
        x, y = self.split.x.index_select(0, idx), self.split.y.index_select(0, idx)
        return x.view(n, self.batch_size, *x.shape[1:]), y.view(n, self.batch_size, *y.shape[1:])

    __next__ = next

    def __iter__(self):
        return self

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "perm": self.perm.clone(), "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        # A checkpoint is read onto the run's device (a GPU, say); the generator and its
        # permutation live on the CPU whatever the device.
        self.generator.set_state(state["generator"].cpu())
        self.perm = state["perm"].cpu().clone()
        self.pos = int(state["pos"])


class TaskFamily:
    """A distribution over tasks. ``sample(i)`` returns the i-th task of a seeded sequence."""

    def sample(self, index: int) -> Task:
        raise NotImplementedError

    @property
    def name(self) -> str:
        return type(self).__name__

    def representative(self) -> Task:
        """A typical task (the first one by default): sizes the models and the losses."""
        return self.sample(0)

    def meta_test_task(self, index: int) -> Task:
        """The ``index``-th meta-test task. A single-task family tests on its own task
        (its held-out ``test`` split) with a new model seed per index; episodic families
        draw episodes from their meta-test classes."""
        return self.representative()


class SingleTask(TaskFamily):
    """The family of one task: every sample is the same task."""

    def __init__(self, task: Task):
        self.task = task

    def sample(self, index: int) -> Task:
        return self.task

    @property
    def name(self) -> str:
        return self.task.name
