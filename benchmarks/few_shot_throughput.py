"""Meta-training throughput of episodic meta-learning: the meta-batch as one vmapped
inner loop vs a Python loop over its tasks, same tasks, same meta-gradient.

Run: ``python -m benchmarks.few_shot_throughput [--repeats 5] [--steps 4] [--device cuda]
[--only sine digits]``.
Prints episodes (tasks) per second, median of the repeats, with the two modes
interleaved so that machine load affects both alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.common import add_device_argument, device_of, machine, sync
from learnreg import config as configlib
from learnreg.experiment import build

SETTINGS = [
    ("MAML, sine 10-shot, MLP 40-40", "maml/sine", 4),
    ("MAML, sine 10-shot, MLP 40-40", "maml/sine", 16),
    ("MAML, digits 5-way 1-shot, conv4-32", "maml/digits_5w1s", 4),
    ("MAML, Fashion-MNIST 5-way 1-shot, conv4-32", "maml/fmnist_5w1s", 4),
    (
        "NPBML (gradient-preconditioner variant), Fashion-MNIST 5-way 1-shot, conv4-32",
        "npbml_gradprecond/fmnist_5w1s",
        4,
    ),
    (
        "NPBML (gradient-preconditioner variant), Fashion-MNIST 5-way 5-shot, conv4-32",
        "npbml_gradprecond/fmnist_5w5s",
        4,
    ),
]


def trainer(preset: str, vmap: bool, meta_batch: int, device: str = "cpu"):
    cfg = configlib.load(
        f"configs/{preset}.yaml",
        [
            f"estimator.vmap={str(vmap).lower()}",
            f"estimator.meta_batch={meta_batch}",
            "logger.backends=[none]",
            f"device={device}",
        ],
    )
    return build(cfg).trainer


def episodes_per_second(tr, steps: int) -> float:
    sync(tr.device)
    start = time.perf_counter()
    tr.fit(tr.meta_step + steps, progress=False)
    sync(tr.device)
    return steps * tr.estimator.meta_batch / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4, help="meta-steps per measurement")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--only", nargs="+", default=[""], help="run the settings whose title contains one of these"
    )
    add_device_argument(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = device_of(args.device)
    print(f"{machine(device)}, {torch.get_num_threads()} thread(s)\n")
    print("| setting | meta-batch | loop (episodes/s) | vmap (episodes/s) | speed-up |")
    print("|---|---|---|---|---|")
    for title, preset, meta_batch in SETTINGS:
        if not any(word.lower() in title.lower() for word in args.only):
            continue
        trainers = {mode: trainer(preset, mode, meta_batch, str(device)) for mode in (False, True)}
        for tr in trainers.values():  # warm-up: first-call overheads, allocator
            tr.fit(1, progress=False)
        rates: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeats):
            for mode, tr in trainers.items():
                rates[mode].append(episodes_per_second(tr, args.steps))
        loop, vmapped = (statistics.median(rates[m]) for m in (False, True))
        print(
            f"| {title} | {meta_batch} | {loop:.1f} | {vmapped:.1f} | {vmapped / loop:.2f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
