"""Where a population's fitness is computed: in-process (vmapped or one by one), in a
process pool, or as Ray tasks on a cluster. One interface: ``evaluate(problem, candidates)``.

Every backend splits the candidates into groups and runs
:func:`~learnreg.estimators.evaluators.fitness.evaluate_group` on each, so distributed
workers still vectorize over their share. The problem (task data, roles, settings) is
shipped to each worker once and reused across generations.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import weakref
from typing import Literal

import torch

from learnreg.errors import ConfigError
from learnreg.estimators.evaluators import ray_local
from learnreg.estimators.evaluators.fitness import Evaluation, FitnessProblem, evaluate_group
from learnreg.registry import register


def split(items: list, parts: int) -> list[list]:
    """``items`` in at most ``parts`` contiguous, nearly equal, non-empty chunks."""
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    chunks, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        chunks.append(items[start:end])
        start = end
    return chunks


class Evaluator:
    """Computes the fitness of a list of candidates (modules of the searched role) for one problem.

    Attributes:
        one_per_run: the evaluator spreads the work over machines itself (Ray), so a
            multi-process run must not start one per process.
    """

    one_per_run = False

    def evaluate(self, problem: FitnessProblem, candidates: list) -> list[Evaluation]:
        raise NotImplementedError

    def close(self) -> None:
        """Release workers (pools, Ray connections) this evaluator started."""


@register("evaluator", "vmap")
class VmapEvaluator(Evaluator):
    """In-process, the population vmapped into one batched training run (the default).

    Args:
        max_batch: at most this many candidates per batched run (memory bound; None: all).
    """

    def __init__(self, max_batch: int | None = None):
        if max_batch is not None and max_batch < 1:
            raise ConfigError(f"vmap evaluator: max_batch must be >= 1, got {max_batch}")
        self.max_batch = max_batch

    def evaluate(self, problem, candidates):
        if not candidates:
            return []
        size = self.max_batch or len(candidates)
        return [
            e
            for i in range(0, len(candidates), size)
            for e in evaluate_group(problem, candidates[i : i + size])
        ]


@register("evaluator", "serial")
class SerialEvaluator(Evaluator):
    """In-process, one candidate after another (the reference the others are tested against)."""

    def evaluate(self, problem, candidates):
        return evaluate_group(problem, candidates, batched=False) if candidates else []


# ---- process pool ------------------------------------------------------------------

_WORKER_PROBLEM: FitnessProblem | None = None


def _start_worker(problem: FitnessProblem, threads: int) -> None:
    global _WORKER_PROBLEM
    torch.set_num_threads(threads)
    _WORKER_PROBLEM = problem


def _evaluate_in_worker(candidates: list, batched: bool) -> list[Evaluation]:
    return evaluate_group(_WORKER_PROBLEM, candidates, batched)


@register("evaluator", "processes")
class ProcessPoolEvaluator(Evaluator):
    """A pool of worker processes on this machine; each vectorizes over its share.

    Args:
        workers: processes (the candidates are split into this many groups).
        vectorize: vmap within each worker's group (False: one by one).
        threads: torch intra-op threads per worker.
        start_method: ``spawn`` (safe with threads), ``forkserver`` or ``fork``.
    """

    def __init__(
        self,
        workers: int = 2,
        vectorize: bool = True,
        threads: int = 1,
        start_method: Literal["spawn", "forkserver", "fork"] = "spawn",
    ):
        if workers < 1 or threads < 1:
            raise ConfigError(
                f"processes evaluator: workers and threads must be >= 1, got {workers}, {threads}"
            )
        self.workers, self.vectorize, self.threads = workers, vectorize, threads
        self.start_method = start_method
        self.pool: concurrent.futures.ProcessPoolExecutor | None = None
        self.problem: FitnessProblem | None = None

    def _pool_for(self, problem: FitnessProblem) -> concurrent.futures.ProcessPoolExecutor:
        if self.pool is None or self.problem is not problem:
            self.close()
            _check_picklable(problem, "processes")
            self.pool = concurrent.futures.ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context(self.start_method),
                initializer=_start_worker,
                initargs=(problem, self.threads),
            )
            self.problem = problem
            weakref.finalize(self, self.pool.shutdown, cancel_futures=True)
        return self.pool

    def evaluate(self, problem, candidates):
        if not candidates:
            return []
        pool = self._pool_for(problem)
        futures = [
            pool.submit(_evaluate_in_worker, chunk, self.vectorize)
            for chunk in split(candidates, self.workers)
        ]
        return [e for future in futures for e in future.result()]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
        self.pool, self.problem = None, None


def _check_picklable(problem: FitnessProblem, backend: str) -> None:
    import pickle

    for task in problem.tasks:
        try:
            pickle.dumps(task.model_fn)
        except Exception as exc:
            raise ConfigError(
                f"the {backend} evaluator ships the task to worker processes, but its model_fn "
                f"({task.model_fn!r}) cannot be pickled ({exc}). Build it with functools.partial "
                "of a module-level function (configs do), or use the vmap evaluator."
            ) from None


# ---- Ray -----------------------------------------------------------------------------


def _evaluate_chunk(problem: FitnessProblem, candidates: list, batched: bool) -> list[Evaluation]:
    return evaluate_group(problem, candidates, batched)


@register("evaluator", "ray")
class RayEvaluator(Evaluator):
    """Fitness evaluations as Ray tasks: on an existing cluster (``address``) or a local
    Ray instance on the loopback interface. Needs the optional extra ``learnreg[ray]``.

    A local instance this evaluator started is shut down by :meth:`close` (the search
    calls it when meta-training ends); if the process dies first, even by SIGKILL, a
    watchdog kills the instance's processes (:mod:`.ray_local`).

    Args:
        address: a cluster address (``ray://head:10001``, ``auto``); None starts Ray
            locally unless this process is already connected.
        tasks: Ray tasks per generation (None: the cluster's CPUs / ``cpus_per_task``).
        vectorize: vmap within each task's group.
        num_cpus: CPUs of a locally started instance (None: Ray's default).
        cpus_per_task, gpus_per_task: resources each task requests.
        runtime_env: Ray runtime environment (e.g. ``{"py_modules": [...]}`` when the
            cluster's nodes do not have learnreg installed).
    """

    one_per_run = True

    def __init__(
        self,
        address: str | None = None,
        tasks: int | None = None,
        vectorize: bool = True,
        num_cpus: int | None = None,
        cpus_per_task: float = 1.0,
        gpus_per_task: float = 0.0,
        runtime_env: dict | None = None,
    ):
        self.address, self.tasks, self.vectorize = address, tasks, vectorize
        self.num_cpus, self.runtime_env = num_cpus, runtime_env
        self.resources = {"num_cpus": cpus_per_task, "num_gpus": gpus_per_task}
        self.started = False
        self.watchdog = None
        self.problem, self.problem_ref = None, None

    def _ray(self):
        try:
            import ray
        except ImportError:
            raise ConfigError(
                "the ray evaluator needs Ray: `pip install 'learnreg[ray]'` (or choose "
                "`evaluator: {_component_: vmap}`)."
            ) from None
        if not ray.is_initialized():
            options = {"runtime_env": self.runtime_env, "log_to_driver": False}
            if self.address is not None:
                ray.init(address=self.address, **options)
            else:
                self.watchdog = ray_local.start(ray, self.num_cpus, options)
                self.started = True
        return ray

    def evaluate(self, problem, candidates):
        if not candidates:
            return []
        ray = self._ray()
        if self.problem is not problem:  # ship the data once, not once per task
            self.problem, self.problem_ref = problem, ray.put(problem)
        tasks = self.tasks or max(
            1, int(ray.cluster_resources().get("CPU", 1) // max(self.resources["num_cpus"], 1e-9))
        )
        remote = ray.remote(**self.resources)(_evaluate_chunk)
        refs = [
            remote.remote(self.problem_ref, chunk, self.vectorize)
            for chunk in split(candidates, tasks)
        ]
        return [e for chunk in ray.get(refs) for e in chunk]

    def close(self) -> None:
        self.problem, self.problem_ref = None, None
        if self.started:
            import ray

            ray_local.stop(ray, self.watchdog)
            self.started, self.watchdog = False, None
