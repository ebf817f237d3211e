"""Cost of SAM, GSAM and GAM relative to their base optimizer, one run
(``python -m benchmarks.sam_cost``).

Time: a full step (every forward/backward pass plus the updates) divided by one base
step (one forward/backward pass plus ``torch.optim.SGD``), medians of repeats on the
same model and batch. Memory: parameter-sized buffers the wrapper holds between passes
(the copy of the weights plus what the method remembers), counted from its tensors,
next to the reference implementations' counts.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from learnreg.models import SmallCNN
from learnreg.optim import GAM, GSAM, SAM

#: parameter-sized buffers kept by the public reference implementations (davda54/sam:
#: old_p; GSAM: old_p, old_g; GAM: e_w_0, e_w_1_2, g_0, g_1, g_2, pro_m...) as given in issue 3.
REFERENCE_BUFFERS = {"SAM": 1, "GSAM": 2, "GAM": 6}


def median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def held_buffers(opt, model, x, y) -> float:
    """Most parameter-sized buffers held at any phase boundary of one step."""
    numel = sum(p.numel() for p in model.parameters())
    peak = 0.0
    for _ in range(opt.perturbation.passes - 1):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.ascend()
        progress = opt._progress
        tensors = list(progress.origin) + [t for ts in progress.memory.values() for t in ts]
        peak = max(peak, sum(t.numel() for t in tensors) / numel)
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    return peak


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = SmallCNN((1, 28, 28), 10, channels=(32, 64))
    x, y = torch.randn(args.batch, 1, 28, 28), torch.randint(0, 10, (args.batch,))
    numel = sum(p.numel() for p in model.parameters())

    def closure_for(opt):
        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        return closure

    base = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    base_closure = closure_for(base)

    def base_step():
        base_closure()
        base.step()

    wrappers = {
        "SAM": lambda: SAM(model.parameters(), torch.optim.SGD, lr=1e-3, momentum=0.9),
        "GSAM": lambda: GSAM(model.parameters(), torch.optim.SGD, alpha=0.1, lr=1e-3, momentum=0.9),
        "GAM": lambda: GAM(model.parameters(), torch.optim.SGD, lr=1e-3, momentum=0.9),
    }
    base_time = median_time(base_step, args.repeats)
    rows = []
    for name, build in wrappers.items():
        opt = build()
        closure = closure_for(opt)
        t = median_time(lambda opt=opt, closure=closure: opt.step(closure), args.repeats)
        buffers = held_buffers(build(), model, x, y)
        rows.append((name, opt.perturbation.passes, t, t / base_time, buffers))
    print(
        f"SmallCNN(32, 64) on 28x28, batch {args.batch}, {numel / 1e6:.2f}M parameters, "
        f"{args.threads} thread(s), torch {torch.__version__}\n"
    )
    print(
        "| optimizer | passes | step ms | ratio to SGD step | buffers held (learnreg) | reference |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| SGD (base) | 1 | {base_time * 1e3:.1f} | 1.00x | 0 | 0 |")
    for name, passes, t, ratio, buffers in rows:
        print(
            f"| {name} | {passes} | {t * 1e3:.1f} | {ratio:.2f}x | {buffers:g} | {REFERENCE_BUFFERS[name]} |"
        )


if __name__ == "__main__":
    main()
