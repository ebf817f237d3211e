"""Few-shot ladders on 600 meta-test episodes: random init (tuned inner lr), MAML, Meta-SGD, NPBML.

Each learned rung is a preset run through ``learnreg.run`` (reproducible with
``learnreg run PRESET meta_steps=N``); runs land in ``OUT/<setting>/<preset>`` and a
finished run is read back instead of re-run, an interrupted one resumes.

The random-init rung trains from the model's own initialization with the ladder's first
preset's inner optimizer; its learning rate is chosen from a grid on meta-validation
episodes (meta-val classes, or, when the class split has none, meta-train-class episodes
never drawn in meta-training) and only then run on the meta-test episodes.

Every rung is evaluated on the same meta-test episodes, so differences are paired:
the table gives each rung's mean ± 95% t-interval and the paired difference to the rung
above (and Meta-SGD's to MAML) with its own t-interval.

Run: ``python -m benchmarks.few_shot --settings sine_paper fmnist_5w1s_paper
[--meta-steps N] [--seeds 600] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import torch
from scipy import stats

from benchmarks.common import add_device_argument, device_of, machine
from learnreg import config as configlib
from learnreg.eval import meta_test
from learnreg.experiment import build
from learnreg.runner import run

LADDERS = {
    # the papers' own settings, side by side
    "sine_paper": [("MAML (paper)", "maml/sine_paper"), ("Meta-SGD (paper)", "metasgd/sine_paper")],
    "fmnist_5w1s_paper": [
        ("MAML (paper)", "maml/fmnist_5w1s_paper"),
        ("Meta-SGD (paper)", "metasgd/fmnist_5w1s_paper"),
    ],
    "fmnist_5w5s_paper": [
        ("MAML (paper)", "maml/fmnist_5w5s_paper"),
        ("Meta-SGD (paper)", "metasgd/fmnist_5w5s_paper"),
    ],
}
for _s in ("sine", "fmnist_5w1s", "fmnist_5w5s", "digits_5w1s"):  # NPBML's ablation ladder
    LADDERS[f"{_s}_npbml"] = [
        ("MAML (NPBML's inner optimizer)", f"npbml/ablation/{_s}_0_maml"),
        ("+ learned loss", f"npbml/ablation/{_s}_1_learned_loss"),
        ("+ warp layers", f"npbml/ablation/{_s}_2_warp"),
        ("+ FiLM (= NPBML)", f"npbml/{_s}"),
    ]
    LADDERS[f"{_s}_gradprecond"] = [  # the earlier mechanism (BENCHMARKS.md §4, first ladders)
        ("MAML", f"maml/{_s}"),
        ("+ learned loss", f"npbml_gradprecond/ablation/{_s}_1_learned_loss"),
        ("+ preconditioner", f"npbml_gradprecond/ablation/{_s}_2_preconditioner"),
        ("+ FiLM (= gradient-preconditioner NPBML)", f"npbml_gradprecond/{_s}"),
        ("Meta-SGD", f"metasgd/{_s}"),
    ]
LR_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
VAL_OFFSET = 10_000_000  # meta-train-class episodes this far along are never meta-trained on


def t_interval(values: list[float]) -> dict:
    """Mean and 95% t-interval half-width (n − 1 degrees of freedom)."""
    n = len(values)
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if n > 1 else float("nan")
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n) if n > 1 else float("nan")
    return {"mean": mean, "ci95": half, "n": n}


def metric_of(cfg: dict) -> str:
    return "mse" if cfg["task"]["_component_"] == "sine" else "accuracy"


def val_task(family, index: int):
    try:
        return family.meta_val_task(index)
    except Exception:  # no meta-val classes: unseen meta-train-class episodes
        return family.sample(VAL_OFFSET + index)


def random_init_rung(preset: str, seeds: int, val_episodes: int, device: str, out: Path) -> dict:
    """Tune the random-init rung's inner lr on meta-validation episodes, then meta-test it.

    Returns ``{"lr", "val": {lr: mean}, "per_seed": [metric, ...]}`` (cached in ``out``)."""
    path = out / "random_init.json"
    if path.exists():
        cached = json.loads(path.read_text())
        if len(cached["per_seed"]) == seeds:
            return cached
    base = configlib.load(f"configs/{preset}.yaml", [f"device={device}", "logger.backends=[none]"])
    metric, steps = metric_of(base), base["meta_test"]["steps"]
    sign = 1.0 if metric == "mse" else -1.0  # lower is better after the sign

    def episodes(lr: float, tasks) -> list[float]:
        cfg = configlib.load(
            f"configs/{preset}.yaml",
            [f"device={device}", "logger.backends=[none]", f"baseline.optimizer.lr={lr}"],
        )
        exp = build(cfg)
        values = []
        for i, task in tasks:
            run_, _ = meta_test.meta_test_run(
                exp.trainer, exp.baseline, task.to(exp.trainer.device), i, steps, None, "baseline"
            )
            value = meta_test.final_metrics(run_)[metric]
            values.append(value if math.isfinite(value) else sign * float("inf"))
        return values

    family = build(base).family
    val = [(i, val_task(family, i)) for i in range(val_episodes)]
    scores = {lr: statistics.fmean(episodes(lr, val)) for lr in LR_GRID}
    best = min(scores, key=lambda lr: sign * scores[lr])
    test = [(i, family.meta_test_task(i)) for i in range(seeds)]
    result = {"lr": best, "val": scores, "per_seed": episodes(best, test), "steps": steps}
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    return result


def run_ladder(setting: str, args, device: str) -> tuple[dict, list[tuple[str, dict]]]:
    out = Path(args.out) / setting
    rungs = []
    for name, preset in LADDERS[setting]:
        overrides = [
            f"meta_test.seeds={args.seeds}",
            "meta_test.baseline=false",
            "logger.backends=[none]",
            f"device={device}",
        ] + ([f"meta_steps={args.meta_steps}"] if args.meta_steps else [])
        summary = run(
            f"configs/{preset}.yaml", overrides, out=out / preset.replace("/", "_"), progress=False
        )
        rungs.append((name, summary))
        print(f"{preset}: {summary['test']} ({summary['meta_train_seconds']:.0f} s)", flush=True)
    random = random_init_rung(LADDERS[setting][0][1], args.seeds, args.val_episodes, device, out)
    return random, rungs


def table(setting: str, random: dict, rungs: list[tuple[str, dict]]) -> str:
    metric = "mse" if "sine" in setting else "accuracy"
    scale, digits = (1.0, 3) if metric == "mse" else (100.0, 1)
    series = [(f"random init, inner lr {random['lr']:g} tuned on meta-val", random["per_seed"])]
    series += [(n, [s["learned"][metric] for s in r["per_seed"]]) for n, r in rungs]
    fmt = lambda st: f"{scale * st['mean']:.{digits}f} ± {scale * st['ci95']:.{digits}f}"  # noqa: E731
    lines = [
        f"| rung | test {metric}{'' if metric == 'mse' else ' %'} | paired change vs the rung above | meta-steps | meta-train s |",
        "|---|---|---|---:|---:|",
    ]
    for i, (name, values) in enumerate(series):
        change = ""
        if i:
            ref_i = 1 if name.startswith("Meta-SGD") else i - 1
            diff = [b - a for a, b in zip(series[ref_i][1], values)]
            change = fmt(t_interval(diff)) + (" vs MAML" if ref_i != i - 1 else "")
        steps = secs = ""
        if i:
            steps, secs = (
                rungs[i - 1][1]["meta_steps"],
                f"{rungs[i - 1][1]['meta_train_seconds']:.0f}",
            )
        lines.append(f"| {name} | {fmt(t_interval(values))} | {change} | {steps} | {secs} |")
    n = len(series[0][1])
    lines.append(
        f"\n{n} meta-test episodes, the same for every rung; ± is the 95% t-interval "
        f"(n − 1 = {n - 1} degrees of freedom); a paired interval containing 0 is no "
        "significant difference."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=["sine_paper"], choices=sorted(LADDERS))
    parser.add_argument("--meta-steps", type=int, default=0, help="0: the presets' budgets")
    parser.add_argument("--seeds", type=int, default=600)
    parser.add_argument("--val-episodes", type=int, default=100)
    parser.add_argument("--out", default="runs/bench_few_shot")
    parser.add_argument("--threads", type=int, default=1)
    add_device_argument(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = device_of(args.device)
    print(f"machine: {machine(device)}\n", flush=True)
    for setting in args.settings:
        random, rungs = run_ladder(setting, args, str(device))
        text = table(setting, random, rungs)
        print(f"**{setting}**\n\n{text}\n", flush=True)
        (Path(args.out) / setting / "table.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
