"""Task families for meta-training learned optimizers: datasets × architectures × seeds."""

from __future__ import annotations

import functools
import itertools
import random
from dataclasses import replace

from learnreg import components
from learnreg.core.task import Task, TaskFamily
from learnreg.errors import ConfigError
from learnreg.registry import register


@register("task", "optimizee_family")
class OptimizeeFamily(TaskFamily):
    """Learned-optimizer training problems: datasets × MLP widths × activations × seeds.

    Training problems ("optimizees") are sampled across datasets and MLP widths and
    activations; each inner run also gets its own model seed.

    Meta-testing uses ``meta_test``: a dataset and a model that may lie outside the
    training distribution (a CNN, or an MLP of an unseen width/activation), the way
    learned optimizers are judged on optimizees not seen in meta-training.

    Args:
        datasets: task specs (a registered task name or ``{_component_: ..., ...}``).
        widths: hidden-layer widths of the MLPs sampled for meta-training.
        activations: their activations.
        models: further model specs added to the architecture pool (e.g. a small CNN).
        meta_test: ``{task: spec, model: spec}``; defaults: the first dataset and the
            run's ``model`` section (or the first MLP of the grid).
        seed: seeds the sequence of (dataset, architecture) draws.
        model: the run's ``model`` section (injected).

    Example (YAML)::

        task:
          _component_: optimizee_family
          datasets: [{_component_: digits, batch_size: 64}, wine, breast_cancer]
          widths: [[16], [32], [32, 32]]
          activations: [relu, tanh, sigmoid]
          meta_test: {model: {_component_: mlp, hidden: [64], activation: relu}}
    """

    def __init__(
        self,
        datasets: list = ("digits",),
        widths: list = ((32,),),
        activations: list[str] | tuple[str, ...] = ("relu",),
        models: list | tuple = (),
        meta_test: dict | None = None,
        seed: int = 0,
        model: dict | None = None,
    ):
        if not datasets:
            raise ConfigError("optimizee_family needs at least one dataset")
        self.dataset_specs = [components.normalize_component(d, "datasets[]") for d in datasets]
        self.architectures = [
            {"_component_": "mlp", "hidden": list(w), "activation": a}
            for w, a in itertools.product(widths, activations)
        ] + [components.normalize_component(m, "models[]") for m in models]
        if not self.architectures:
            raise ConfigError(
                "optimizee_family needs at least one width and activation, or a model"
            )
        meta_test = dict(meta_test or {})
        unknown = set(meta_test) - {"task", "model"}
        if unknown:
            raise ConfigError(
                f"optimizee_family.meta_test: unknown keys {sorted(unknown)}; use task, model"
            )
        self.test_task_spec = components.normalize_component(
            meta_test.get("task") or self.dataset_specs[0], "meta_test.task"
        )
        self.test_model_spec = components.normalize_component(
            meta_test.get("model") or model or self.architectures[0], "meta_test.model"
        )
        self.seed = seed

    @property
    def name(self) -> str:
        return "optimizees"

    def sample(self, index: int) -> Task:
        rng = random.Random(f"optimizee/{self.seed}/{index}")
        spec = self.dataset_specs[rng.randrange(len(self.dataset_specs))]
        arch = self.architectures[rng.randrange(len(self.architectures))]
        return self._with_model(_load(spec), arch)

    def meta_test_task(self, index: int) -> Task:
        return self._with_model(_load(self.test_task_spec), self.test_model_spec)

    @staticmethod
    def _with_model(task: Task, arch: dict) -> Task:
        label = arch["_component_"] + "".join(
            f"-{v}" for k, v in arch.items() if k != "_component_"
        )
        return replace(
            task,
            name=f"{task.name}/{label}",
            model_fn=functools.partial(
                components.instantiate,
                "model",
                arch,
                input_shape=task.input_shape,
                out_features=task.out_features,
            ),
        )


@functools.lru_cache(maxsize=16)
def _load_cached(key: str) -> Task:
    import json

    return components.instantiate("task", json.loads(key))


def _load(spec: dict) -> Task:
    import json

    return _load_cached(json.dumps(spec, sort_keys=True))
