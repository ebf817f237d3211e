"""Parameter-group options: every key a group carries is one the optimizer reads.

``torch.optim`` stores any key a parameter group is given and never says whether it is
used, so ``{"params": ..., "weight_decay": 0.5}`` given to an optimizer without weight
decay changes nothing, silently. learnreg's optimizers check the keys of every group
when it joins (at construction and in ``add_param_group``) and refuse the ones they
would ignore.
"""

from __future__ import annotations

from collections.abc import Iterable

#: keys ``torch.optim`` itself or its LR schedulers write into groups (never options).
TORCH_KEYS = frozenset(
    {"params", "param_names", "initial_lr", "max_lr", "min_lr", "base_momentum", "max_momentum"}
)


def check_group_options(group: dict, accepted: Iterable[str], owner: str) -> None:
    """Refuse a parameter group carrying an option ``owner`` would not read.

    Args:
        group: the parameter group (a dict with ``params``).
        accepted: the option names ``owner`` reads from a group.
        owner: the optimizer's name, for the message.

    Raises:
        ValueError: naming the unknown keys and the accepted ones.
    """
    accepted = set(accepted)
    unknown = sorted(set(group) - accepted - TORCH_KEYS)
    if unknown:
        raise ValueError(
            f"{owner} does not use the parameter-group option(s) {unknown}; it would ignore "
            f"them. Options it reads: {sorted(accepted)}"
        )
