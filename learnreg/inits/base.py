"""The init role: ``init(model, task) -> dict[str, Tensor]`` of initial parameters."""

from __future__ import annotations

from torch import Tensor, nn

from learnreg.core.bias import Bias


class InitRole(Bias):
    """Contract: ``forward(model, task) -> {name: tensor}`` covering every parameter of
    ``model``, differentiable with respect to the role's own parameters."""

    role = "init"
    #: whether ``forward`` reads the values of ``model``'s parameters (a random init
    #: does; MAML's θ0 only reads their names and shapes). When it does not, the inner
    #: runs of a meta-batch share one built model (:meth:`MetaContext.new_run`) instead
    #: of building a freshly seeded one per task whose weights would be thrown away.
    reads_model_weights: bool = True
    #: whether ``forward`` reads the task (a task-conditioned init does). When it does
    #: not, a batched meta-batch calls it once and broadcasts θ0 over its tasks
    #: (:func:`learnreg.estimators.batch_start.initial_states`).
    reads_task: bool = True

    def forward(self, model: nn.Module, task=None) -> dict[str, Tensor]:
        raise NotImplementedError
