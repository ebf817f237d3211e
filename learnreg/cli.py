"""The ``learnreg`` command line: ``run``, ``eval``, ``sweep``, ``plot``, ``describe`` and ``list``.

User errors (bad configs, missing data, corrupt checkpoints...) print one line naming
the problem and the fix and exit with status 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
from pathlib import Path

from learnreg.errors import ConfigError, LearnregError


def cmd_run(args) -> int:
    from learnreg.runner import run

    run(
        args.config,
        args.overrides,
        args.out,
        progress=not args.no_progress,
        imports=args.imports,
        tune_cache=args.tune_cache,
    )
    return 0


def cmd_sweep(args) -> int:
    from learnreg.sweep import sweep

    sweep(
        args.config,
        args.param,
        args.out,
        args.overrides,
        args.wandb,
        not args.no_progress,
        imports=args.imports,
    )
    print((Path(args.out) / "comparison.md").read_text())
    return 0


def cmd_plot(args) -> int:
    from learnreg.plots import plot

    _import(args, args.run_dir)  # plots a user module registers
    for path in plot(args.run_dir, args.only or None):
        print(path)
    return 0


def cmd_eval(args) -> int:
    from learnreg.eval.report import evaluate_run

    _import(args, None)  # evaluate_run imports the run's own recorded modules
    evaluate_run(
        args.run_dir,
        radii=tuple(args.radii),
        pga_steps=args.pga_steps,
        fgsm_eps=args.fgsm_eps,
        pgd_steps=args.pgd_steps,
        max_examples=args.max_examples,
    )
    return 0


def cmd_list(args) -> int:
    from learnreg import registry
    from learnreg.config import PRESETS

    if args.kind not in (None, "preset", *registry.KINDS):
        raise ConfigError(
            f"`learnreg list {args.kind}`: unknown kind; choose one of "
            f"{', '.join([*registry.KINDS, 'preset'])}, or none to list everything"
        )
    _import(args, None)
    for kind in registry.KINDS:
        entries = registry.entries(kind)
        if entries and (args.kind in (None, kind)):
            print(f"{kind}:")
            for e in entries:
                print(f"  {e.name:<22} {plain_text(e.description)}")
    if args.kind in (None, "preset"):
        print("presets (learnreg run PRESET):")
        for path in sorted(PRESETS.rglob("*.yaml")) if PRESETS.is_dir() else []:
            print(f"  {str(path.relative_to(PRESETS)):<32} {_preset_description(path)}")
    return 0


def cmd_describe(args) -> int:
    from learnreg.tracking.export import load_bias

    path = Path(args.path)
    if path.is_dir():  # a run directory, or its learned/ folder
        learned = path / "learned" if (path / "learned").is_dir() else path
        _import(args, learned.parent if learned != path else path)
        path = learned / args.role
        online = learned / f"{args.role}_online_seed0"
        if not path.with_suffix(".json").exists() and online.with_suffix(".json").exists():
            print(
                f"(online adaptation: {online.name} is meta-test seed 0's adapted "
                f"{args.role}; {args.role}_offline is where every online run started)"
            )
            path = online
    else:
        _import(args, path.parent.parent)
    module = load_bias(path, device="cpu")
    if hasattr(module, "describe"):
        print(module.describe())
    else:
        from learnreg.describe import describe_module

        print(describe_module(module, path))
    return 0


def _import(args, run_dir) -> None:
    """The modules the user named with ``--import``, then those a run directory recorded."""
    from learnreg.imports import import_modules, import_recorded

    import_modules(args.imports)
    if run_dir is not None:
        import_recorded(run_dir)


def plain_text(text: str) -> str:
    """A docstring line without reStructuredText markup (``code``, :class:`X` -> X)."""
    import re

    text = re.sub(r":[a-z]+:`~?([^`]+)`", lambda m: m.group(1).split(".")[-1], text)
    return text.replace("``", "").replace("`", "")


def _preset_description(path: Path) -> str:
    import yaml

    try:
        return str((yaml.safe_load(path.read_text()) or {}).get("description", "")).split("\n")[0]
    except yaml.YAMLError:
        return "(malformed YAML)"


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="a YAML file or a preset name (see `learnreg list preset`)")
    p.add_argument(
        "overrides", nargs="*", help="key.sub=value overrides, e.g. meta_steps=50 optimizer.lr=0.1"
    )
    p.add_argument("--out", help="run directory (re-running on it resumes)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument(
        "--tune-cache",
        metavar="DIR",
        help="share tuned-baseline grids between runs: a seed trained with equal settings "
        "is read from DIR instead of trained again",
    )
    p.set_defaults(func=cmd_run)  # looked up when the parser is built


def _sweep_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="a YAML file or a preset name")
    p.add_argument("overrides", nargs="*", help="key=value overrides applied to every point")
    p.add_argument(
        "--param", action="append", required=True, help="key=v1,v2,...; repeat for a grid"
    )
    p.add_argument("--out", required=True, help="sweep directory (one run directory per point)")
    p.add_argument("--wandb", action="store_true", help="log every run to W&B in one group")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=cmd_sweep)  # looked up when the parser is built


def _plot_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run directory written by `learnreg run`")
    p.add_argument("--only", nargs="*", help="only these plots (default: every applicable one)")
    p.set_defaults(func=cmd_plot)  # looked up when the parser is built


def _describe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="a run directory, its learned/ folder, or an exported bias")
    p.add_argument("--role", default="loss", help="the role to describe in a run directory")
    p.set_defaults(func=cmd_describe)  # looked up when the parser is built


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a finished run directory")
    p.add_argument(
        "--radii", type=float, nargs="+", default=[0.001, 0.005, 0.05, 0.1], help="PGA radii"
    )
    p.add_argument("--pga-steps", type=int, default=20, help="ascent steps per radius")
    p.add_argument("--fgsm-eps", type=float, default=0.1, help="L-inf radius (standardized units)")
    p.add_argument("--pgd-steps", type=int, default=0, help="PGD iterations (0: skip PGD)")
    p.add_argument(
        "--max-examples", type=int, default=2048, help="training examples for flatness metrics"
    )
    p.set_defaults(func=cmd_eval)  # looked up when the parser is built


def _list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", nargs="?", help="only this kind (loss, optimizer, task, preset...)")
    p.set_defaults(func=cmd_list)  # looked up when the parser is built


#: name, help and the function adding its arguments (every subcommand also takes --import)
COMMANDS = [
    ("run", "meta-train and meta-test a config; write a run directory", _run_args),
    ("sweep", "run a grid of a config's values; write one comparison table", _sweep_args),
    ("plot", "draw a run's figures into RUN_DIR/plots (and its W&B run)", _plot_args),
    ("describe", "print an exported bias (a learned loss as a formula)", _describe_args),
    ("eval", "flatness (PGA) and robustness (FGSM) of a finished run's models", _eval_args),
    ("list", "list registered components and presets", _list_args),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="learnreg", description="Meta-learn losses, optimizers and initializations."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    sub = parser.add_subparsers(dest="command", required=True)
    imports = argparse.ArgumentParser(add_help=False)
    imports.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first (it registers custom components); repeatable",
    )
    for name, text, add_arguments in COMMANDS:
        add_arguments(sub.add_parser(name, parents=[imports], help=text))
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("WANDB_SILENT", "true")
    # Idle OpenMP workers sleep instead of spinning (read when torch loads, so set before
    # it is imported): with more than one thread on a busy machine, spinning workers made
    # `make run` 15x slower (BENCHMARKS.md §6, "make run and intra-op threads").
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # `learnreg run CONFIG --out D meta_steps=3`: overrides after options
        if not hasattr(args, "overrides") or any("=" not in e or e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    try:
        status = args.func(args)
        sys.stdout.flush()  # inside the try: a closed pipe fails here, not at exit
        return status
    except LearnregError as exc:
        if args.debug:
            raise
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `learnreg list | head`: the reader left; exit quietly
        _silence_stdout()
        return 0
    except OSError as exc:
        if args.debug or exc.errno not in _STORAGE_ERRNOS:
            raise
        from learnreg.tracking.atomic import storage_error

        print(f"error: {storage_error(exc, exc.filename or '?')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted; re-run the same command to resume from the last checkpoint",
            file=sys.stderr,
        )
        return 130


#: File-system errors a user fixes (space, permissions, a file in the way), not bugs.
_STORAGE_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENOTDIR,
    errno.EEXIST,
    errno.EISDIR,
}


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush meets no closed pipe."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
