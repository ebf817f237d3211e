"""``LearnedOptimizer``: a learned update rule as a drop-in ``torch.optim.Optimizer``.

The rule (a :class:`~learnreg.optimizers.flat.FlatRule`) sees all parameters as one
flat vector: each step gathers the gradients and parameters (one ``torch.cat`` each),
runs the rule over the vector in cache-sized chunks, and adds ``lr × update`` to each
parameter group with one ``foreach`` call per group (after the group's decoupled weight
decay, when it has one). The rule's state lives in flat
buffers; ``self.state[p]`` holds views into them, so ``state_dict()`` has the usual
per-parameter layout and a loaded state continues bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from learnreg import components, registry
from learnreg.errors import CheckpointError, ConfigError
from learnreg.optim.groups import check_group_options
from learnreg.optimizers.flat import FlatRule, compute_dtype
from learnreg.tracking.export import load_bias


def resolve_rule(rule, params: list[Tensor]) -> FlatRule:
    """A rule module from a module, an exported rule path, a run directory, or a
    registered rule name (fresh meta-parameters)."""
    if isinstance(rule, FlatRule):
        return rule
    if isinstance(rule, nn.Module):
        raise TypeError(
            f"{type(rule).__name__} is not a coordinatewise learned rule (FlatRule); "
            "for fixed optimizers use torch.optim directly"
        )
    if not isinstance(rule, (str, Path)):
        raise TypeError(f"rule must be a module, a path or a rule name, got {rule!r}")
    path = Path(rule)
    if (path / "learned" / "optimizer.json").is_file():
        return _check(load_bias(path / "learned" / "optimizer", role="optimizer"), path)
    if path.suffix in (".json", ".safetensors") or path.with_suffix(".json").is_file():
        return _check(load_bias(path, role="optimizer"), path)
    if path.is_dir():
        raise CheckpointError(
            f"{path} holds no learned optimizer (expected {path}/learned/optimizer.json); "
            "was the run's optimizer role learned?"
        )
    names = [e.name for e in registry.entries("optimizer")]
    if str(rule) not in names:
        raise ConfigError(
            f"unknown rule {str(rule)!r}: not a file, a run directory or a registered "
            f"rule name ({', '.join(names)})"
        )
    built = components.instantiate(
        "optimizer", {"_component_": str(rule)}, shapes=[list(p.shape) for p in params]
    )
    return _check(built, rule)


def _check(rule, source) -> FlatRule:
    if not isinstance(rule, FlatRule):
        raise ConfigError(
            f"{source} is a {type(rule).__name__}, not a learned coordinatewise rule; "
            "use the matching torch.optim optimizer instead"
        )
    return rule


@dataclass
class FlatLayout:
    """The flat state and the parameter layout it was built for. Mutated in place:
    ``torch.compile`` drops attribute assignments made on an ``Optimizer`` itself."""

    state: dict | None = None
    key: tuple[int, ...] = field(default_factory=tuple)

    def invalidate(self) -> None:
        self.state, self.key = None, ()


class LearnedOptimizer(torch.optim.Optimizer):
    """Runs a learned update rule as a ``torch.optim`` optimizer.

    Args:
        params: parameters or parameter groups.
        rule: a :class:`~learnreg.optimizers.flat.FlatRule` module; a path to an exported
            rule (``learned/optimizer`` or its ``.json``); a run directory; or a registered
            rule name (``"mlp"``, ``"lstm"``, ``"meta_sgd"``) for fresh meta-parameters.
        lr: multiplies the rule's update (per group; LR schedulers change it), so
            ``lr=0`` leaves parameters unchanged and ``lr=1`` is the rule as learned.
        weight_decay: decoupled weight decay (per group), as AdamW applies it (Loshchilov
            & Hutter, arXiv 1711.05101): before the rule's update every parameter with a
            gradient is multiplied by ``1 − lr · rule.nominal_lr · weight_decay``.
            ``rule.nominal_lr`` is the rule's own step size (the MLP rule's ``step_mult``,
            the Adam learning rate of a fresh rule; the LSTM's ``output_scale``;
            Meta-SGD's initial learning rate), so a fresh ``"mlp"`` rule with
            ``weight_decay=wd`` is ``AdamW(lr=lr · step_mult, weight_decay=wd)``.
        chunk_size: coordinates per chunk (default: the rule's own).
        compile: run the rule's chunk update through ``torch.compile`` (its
            per-coordinate features and moment updates fused around the MLP's matrix
            products; equal to eager to float rounding, the first steps pay the compile
            time; eager where compilation fails, with one warning). See
            :meth:`~learnreg.optimizers.flat.FlatRule.apply_flat`.

    A parameter group may set ``lr`` and ``weight_decay``; any other option is refused
    (``ValueError``), since the rule would ignore it. Parameters without a gradient are left alone and their rule state does not
    advance. The rule runs in float32 for bfloat16/float16 parameters (its state is
    float32) and in the parameters' dtype otherwise; it is moved to their device.

    Example::

        opt = LearnedOptimizer.from_run("runs/lo-mlp", model.parameters())
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=1000)
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
    """

    def __init__(
        self,
        params,
        rule,
        lr: float = 1.0,
        chunk_size: int | None = None,
        weight_decay: float = 0.0,
        compile: bool = False,
    ):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})
        everything = self._params()
        self.rule = resolve_rule(rule, everything).to(everything[0].device)
        self.chunk_size = chunk_size
        self.compile = compile
        self._layout = FlatLayout()

    @classmethod
    def from_run(cls, run_dir: str | Path, params, lr: float = 1.0, **kwargs) -> LearnedOptimizer:
        """The learned optimizer a ``learnreg run`` exported (``RUN_DIR/learned/optimizer``)."""
        run_dir = Path(run_dir)
        if not (run_dir / "learned" / "optimizer.json").is_file():
            raise CheckpointError(
                f"{run_dir} has no learned/optimizer.json: not a finished run of a learned "
                "optimizer (meta-training exports it when it ends)"
            )
        return cls(params, run_dir, lr=lr, **kwargs)

    def _params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = self._params()
        if all(p.grad is None for p in params):
            return loss
        flat = self._flat_state(params)
        dtype = flat["dtype"]
        grad = torch.cat([_flat_grad(p) for p in params]).to(dtype)
        param = torch.cat([p.detach().reshape(-1) for p in params]).to(dtype)
        idle = [i for i, p in enumerate(params) if p.grad is None]
        kept = self._save_slots(flat, idle)
        update = self.rule.apply_flat(
            grad, param, flat, flat["sizes"], self.chunk_size, self.compile
        )
        self._restore_slots(flat, idle, kept)
        self._apply(update, flat["offsets"])
        return loss

    def _apply(self, update: Tensor, offsets: list[int]) -> None:
        index = 0
        for group in self.param_groups:
            targets, steps = [], []
            for p in group["params"]:
                if p.grad is not None:
                    piece = update[offsets[index] : offsets[index] + p.numel()]
                    targets.append(p)
                    steps.append(piece.view_as(p).to(p.dtype))
                index += 1
            if targets and group["lr"] != 0:
                decay = group["lr"] * self.rule.nominal_lr * group["weight_decay"]
                if decay != 0:  # decoupled: the rule never sees it (AdamW's order)
                    torch._foreach_mul_(targets, 1.0 - decay)
                torch._foreach_add_(targets, steps, alpha=group["lr"])

    # -- flat state -------------------------------------------------------------------
    def _flat_state(self, params: list[Tensor]) -> dict:
        key = tuple(id(p) for p in params)
        if self._layout.state is None or key != self._layout.key:
            self._layout.state = self._build_flat(params)
            self._layout.key = key
        return self._layout.state

    def _build_flat(self, params: list[Tensor]) -> dict:
        """Flat buffers from ``self.state`` (zeros for parameters without state), then
        ``self.state[p]`` re-pointed at views of them."""
        self.rule.check_shapes([list(p.shape) for p in params])
        sizes = [p.numel() for p in params]
        offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        dtype = compute_dtype(params[0].dtype)
        device = params[0].device
        fresh = self.rule.init_flat(sum(sizes), dtype, device)
        slots = {}
        for name, zeros in fresh["slots"].items():
            pieces = [
                self.state[p][name].to(device, dtype)
                if name in self.state.get(p, {})
                else zeros[..., o : o + n]
                for p, o, n in zip(params, offsets, sizes)
            ]
            slots[name] = torch.cat(pieces, dim=-1)
        steps = [self.state[p]["step"] for p in params if "step" in self.state.get(p, {})]
        step = steps[0].to(device).clone() if steps else fresh["step"]
        for p, o, n in zip(params, offsets, sizes):
            self.state[p] = {"step": step, **{k: v[..., o : o + n] for k, v in slots.items()}}
        return {"step": step, "slots": slots, "sizes": sizes, "offsets": offsets, "dtype": dtype}

    def _save_slots(self, flat: dict, idle: list[int]) -> list:
        return [
            {
                k: v[..., flat["offsets"][i] : flat["offsets"][i] + flat["sizes"][i]].clone()
                for k, v in flat["slots"].items()
            }
            for i in idle
        ]

    def _restore_slots(self, flat: dict, idle: list[int], kept: list) -> None:
        for i, saved in zip(idle, kept):
            start, n = flat["offsets"][i], flat["sizes"][i]
            for k, v in saved.items():
                flat["slots"][k][..., start : start + n] = v

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state saved by :meth:`state_dict`, keeping the rule's float32 state
        for low-precision parameters (``torch.optim`` would cast it to their dtype)."""
        super().load_state_dict(state_dict)
        for group in self.param_groups:  # saved before an option existed (weight_decay)
            for name, value in self.defaults.items():
                group.setdefault(name, value)
        saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        for pid, p in zip(saved_ids, self._params()):
            if pid in state_dict["state"]:
                self.state[p] = {
                    k: v.to(p.device) if isinstance(v, Tensor) else v
                    for k, v in state_dict["state"][pid].items()
                }
        if "rule" in state_dict:
            try:
                self.rule.load_state_dict(state_dict["rule"])
            except RuntimeError as exc:
                raise CheckpointError(
                    f"the saved rule does not match this optimizer's: {exc}"
                ) from None
        self._layout.invalidate()

    def state_dict(self) -> dict:
        """``torch.optim``'s per-parameter state and groups, plus the rule's tensors under
        ``"rule"`` (so a fresh randomly initialized rule also resumes exactly)."""
        state = super().state_dict()
        state["rule"] = {k: v.detach().clone() for k, v in self.rule.state_dict().items()}
        return state

    def add_param_group(self, param_group: dict) -> None:
        check_group_options(param_group, self.defaults, type(self).__name__)
        for name in ("lr", "weight_decay"):
            value = param_group.get(name, self.defaults[name])
            if not value >= 0.0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        super().add_param_group(param_group)
        if hasattr(self, "_layout"):  # not during __init__
            self._layout.invalidate()


def _flat_grad(p: Tensor) -> Tensor:
    return p.grad.reshape(-1) if p.grad is not None else p.new_zeros(p.numel())
