"""Few-shot episodes as task families: N-way K-shot classification and sine regression.

An episode is a :class:`~learnreg.core.task.Task` whose splits follow one convention:

* ``train`` is the **support** set (N·K examples): the inner loop adapts on it;
* ``val`` is the **query** set (N·Q examples): the meta-objective during meta-training;
* ``test`` is the **same query set**: the meta-test report. A meta-test episode's
  classes are never seen in meta-training, so its query set is a clean test set.

Labels are relabelled ``0..N-1`` in a random order per episode, and the batch size is the
whole support (or query) set, so every inner step is full-batch, as in MAML.

``sample(i)`` is the i-th meta-training episode (meta-train classes) and
``meta_test_task(i)`` the i-th meta-test episode (meta-test classes); both are pure
functions of ``(episode_seed, phase, i)``, so runs, ranks and resumes see the same ones.
``learnreg.eval.meta_test.evaluate(trainer, steps, seeds=600)`` therefore reports 600 test episodes, with the
mean and 95% confidence interval in ``summary.json``.

References:
    Vinyals et al., "Matching Networks for One Shot Learning" (arXiv 1606.04080).
    Finn et al., "Model-Agnostic Meta-Learning" (arXiv 1703.03400): sine regression.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Literal

import torch

from learnreg.core.estimator import derive_seed
from learnreg.core.task import Split, Task, TaskFamily
from learnreg.data.class_pools import ClassPool, load_pool
from learnreg.errors import DataError
from learnreg.registry import register


def model_builder(model, input_shape: tuple[int, ...], out_features: int) -> Callable | None:
    """``model_fn`` of an episode: a config spec (``{"_component_": "conv4", ...}``) or a
    callable taking ``input_shape`` and ``out_features`` (a registered model class)."""
    if model is None:
        return None
    if callable(model):
        return functools.partial(model, input_shape=input_shape, out_features=out_features)
    from learnreg import components

    return components.builder("model", model, input_shape=input_shape, out_features=out_features)


class EpisodeFamily(TaskFamily):
    """Shared plumbing: seeded episodes per phase; subclasses implement :meth:`episode`."""

    episode_seed: int = 0
    #: An episode's ``val`` split is its query set (the labels it is scored on), so no
    #: meta-test adaptation may read it (checked when a config is loaded).
    val_is_query: bool = True

    def episode(self, phase: str, generator: torch.Generator) -> Task:
        raise NotImplementedError

    def _draw(self, phase: str, index: int) -> Task:
        seed = derive_seed(self.episode_seed, phase, index)
        return self.episode(phase, torch.Generator().manual_seed(seed))

    def sample(self, index: int) -> Task:
        return self._draw("train", index)

    def meta_val_task(self, index: int) -> Task:
        return self._draw("val", index)

    def meta_test_task(self, index: int) -> Task:
        return self._draw("test", index)


@register("task", "few_shot")
class FewShotEpisodes(EpisodeFamily):
    """N-way K-shot classification episodes from disjoint meta-train / meta-test classes.

    Args:
        dataset: ``fashion_mnist``, ``mnist``, ``digits``, ``omniglot`` or
            ``mini_imagenet`` (folder layouts: :mod:`learnreg.data.class_pools`).
        ways: classes per episode (N).
        shots: support examples per class (K).
        queries: query examples per class (Q; 15 in most papers).
        class_split: meta-train/val/test class counts (default: 5/0/5 for the 10-class
            datasets, 1100/100/423 for Omniglot; mini-ImageNet's split is fixed).
        split_seed: seeds which classes go to which meta-split.
        episode_seed: seeds the episode sequence.
        path: a folder holding the dataset (default: the data root, then system folders).
        download: let torchvision download the dataset when it is absent.
        transductive: append the query inputs to the support set (train split) with the
            label -100 (PyTorch's ``ignore_index``: unlabelled), so the inner loop's loss
            and batch statistics see them, as in NPBML; cross-entropy ignores them.
        model: the model spec (injected from the run's ``model`` section).
    """

    def __init__(
        self,
        dataset: Literal["fashion_mnist", "mnist", "digits", "omniglot", "mini_imagenet"] = (
            "fashion_mnist"
        ),
        ways: int = 5,
        shots: int = 1,
        queries: int = 15,
        class_split: tuple[int, int, int] | list[int] | None = None,
        split_seed: int = 0,
        episode_seed: int = 0,
        path: str | None = None,
        download: bool = False,
        transductive: bool = False,
        model=None,
    ):
        if min(ways, shots, queries) < 1:
            raise DataError(f"need ways, shots, queries >= 1; got {ways}, {shots}, {queries}")
        self.pool: ClassPool = load_pool(dataset, class_split, split_seed, path, download)
        self.dataset, self.ways, self.shots, self.queries = dataset, ways, shots, queries
        self.episode_seed, self.transductive = episode_seed, transductive
        for phase in ("train", "test"):
            self._check_phase(phase)
        shape = tuple(self.pool.x.shape[1:])
        self.model_fn = model_builder(model, shape, ways)

    @property
    def name(self) -> str:
        return f"{self.dataset}-{self.ways}way-{self.shots}shot"

    def _check_phase(self, phase: str) -> None:
        classes = self.pool.classes[phase]
        if len(classes) < self.ways:
            raise DataError(
                f"{self.dataset}: {self.ways}-way episodes need {self.ways} meta-{phase} classes, "
                f"the class split gives {len(classes)}; change task.class_split or task.ways"
            )
        need = self.shots + self.queries
        small = [c for c in classes if len(self.pool.indices(c)) < need]
        if small:
            raise DataError(
                f"{self.dataset}: class {small[0]} has {len(self.pool.indices(small[0]))} "
                f"examples, fewer than shots + queries = {need}; lower task.shots or task.queries"
            )

    def episode(self, phase: str, generator: torch.Generator) -> Task:
        if phase == "val":
            self._check_phase(phase)
        classes = self.pool.classes[phase]
        chosen = torch.randperm(len(classes), generator=generator)[: self.ways].tolist()
        support, query = [], []
        for cls_index in chosen:
            rows = self.pool.indices(classes[cls_index])
            pick = rows[torch.randperm(len(rows), generator=generator)[: self.shots + self.queries]]
            support.append(pick[: self.shots])
            query.append(pick[self.shots :])
        labels = torch.arange(self.ways)
        train = Split(self.pool.images(torch.cat(support)), labels.repeat_interleave(self.shots))
        test = Split(self.pool.images(torch.cat(query)), labels.repeat_interleave(self.queries))
        if self.transductive:  # the query inputs, unlabelled, join the support set
            train = Split(
                torch.cat([train.x, test.x]), torch.cat([train.y, torch.full_like(test.y, -100)])
            )
        return Task(
            self.name,
            "classification",
            train,
            test,
            test,
            num_classes=self.ways,
            batch_size=max(len(train), len(test)),
            model_fn=self.model_fn,
        )


@register("task", "sine")
class SineEpisodes(EpisodeFamily):
    """Sine-wave regression episodes (MAML's few-shot regression benchmark).

    ``y = A·sin(x − φ)`` with ``A ~ U[0.1, 5]``, ``φ ~ U[0, π]``, ``x ~ U[−5, 5]``.

    Meta-train and meta-test episodes come from the same distribution through disjoint
    seed streams (there are no classes to hold out).

    Args:
        shots: support points (K; 5 or 10 in MAML).
        queries: query points.
        amplitude, phase, x_range: the sampling intervals.
        episode_seed: seeds the episode sequence.
        model: the model spec (injected).
    """

    def __init__(
        self,
        shots: int = 10,
        queries: int = 10,
        amplitude: tuple[float, float] | list[float] = (0.1, 5.0),
        phase: tuple[float, float] | list[float] = (0.0, math.pi),
        x_range: tuple[float, float] | list[float] = (-5.0, 5.0),
        episode_seed: int = 0,
        model=None,
    ):
        if min(shots, queries) < 1:
            raise DataError(f"need shots, queries >= 1; got {shots}, {queries}")
        self.shots, self.queries, self.episode_seed = shots, queries, episode_seed
        self.amplitude, self.phase, self.x_range = tuple(amplitude), tuple(phase), tuple(x_range)
        self.model_fn = model_builder(model, (1,), 1)

    @property
    def name(self) -> str:
        return f"sine-{self.shots}shot"

    def episode(self, phase: str, generator: torch.Generator) -> Task:
        def uniform(bounds, *shape):
            low, high = bounds
            return low + (high - low) * torch.rand(*shape, generator=generator)

        amplitude, shift = uniform(self.amplitude, 1), uniform(self.phase, 1)
        x = uniform(self.x_range, self.shots + self.queries, 1)
        y = amplitude * torch.sin(x - shift)
        train = Split(x[: self.shots], y[: self.shots])
        test = Split(x[self.shots :], y[self.shots :])
        return Task(
            self.name,
            "regression",
            train,
            test,
            test,
            num_classes=1,
            batch_size=max(len(train), len(test)),
            model_fn=self.model_fn,
        )
