"""A non-zero rank's part of a multi-process run (``torchrun``): meta-train its share of
the tasks in lockstep with rank 0 and write nothing. Rank 0 runs :class:`learnreg.runner.Run`
and owns the run directory; the collective calls here mirror its checkpoints one for one.
"""

from __future__ import annotations

from pathlib import Path

from learnreg.core import distributed
from learnreg.errors import NumericalError
from learnreg.experiment import build
from learnreg.tracking.checkpoint import load_checkpoint, rng_state, set_rng_state


def follow(cfg: dict, out: Path) -> dict:
    """A non-zero rank's part of a multi-process run: meta-train its tasks in lockstep with
    rank 0 (resuming from rank 0's checkpoint when there is one), write nothing.

    ``out`` must be the same directory on every rank (pass ``--out``)."""
    checkpoint = out / "checkpoints" / "last.pt"
    if (out / "summary.json").exists():
        return {}
    state = load_checkpoint(checkpoint) if checkpoint.exists() else None
    if state is not None and state["run"]["phase"] != "fit":
        return {}
    exp = build(cfg)
    if state is not None:
        exp.trainer.load_state_dict(state["trainer"])
        ranks = state.get("rng_ranks") or []
        set_rng_state(ranks[distributed.rank_and_world()[0]] if ranks else state["rng"])

    def join_checkpoint(trainer) -> None:  # rank 0's Run._save, in step with it
        with distributed.gathering_state():
            trainer.state_dict()
            distributed.gather_to_main(rng_state())

    def on_step(trainer) -> None:
        if trainer.meta_step % cfg["checkpoint_every"] == 0:
            join_checkpoint(trainer)

    try:
        exp.trainer.fit(cfg["meta_steps"], on_step=on_step, progress=False)
    except NumericalError:
        join_checkpoint(exp.trainer)
        raise
    return {}
