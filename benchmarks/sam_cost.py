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

import torch
import torch.nn.functional as F

from benchmarks.common import add_device_argument, device_of, machine, median_time
from learnreg.models import MLP, SmallCNN
from learnreg.optim import GAM, GSAM, SAM

#: parameter-sized buffers kept by the public reference implementations (davda54/sam:
#: old_p; GSAM: old_p, old_g; GAM: e_w_0, e_w_1_2, g_0, g_1, g_2, pro_m...) as given in issue 3.
REFERENCE_BUFFERS = {"SAM": 1, "GSAM": 2, "GAM": 6}


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


MODELS = {
    "SmallCNN(32, 64)": lambda: SmallCNN((1, 28, 28), 10, channels=(32, 64)),
    "MLP 784-1024-1024-10": lambda: MLP((1, 28, 28), 10, hidden=(1024, 1024)),
}


def measure(name: str, build_model, args) -> list[str]:
    torch.manual_seed(0)
    device = device_of(args.device)
    model = build_model().to(device)
    x = torch.randn(args.batch, 1, 28, 28).to(device)
    y = torch.randint(0, 10, (args.batch,)).to(device)
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
    base_time = median_time(base_step, args.repeats, device=device)
    rows = [
        f"| {name} | {numel / 1e6:.2f}M | SGD (base) | 1 | {base_time * 1e3:.1f} | 1.00x | 0 | 0 |"
    ]
    for method, build in wrappers.items():
        opt = build()
        closure = closure_for(opt)
        t = median_time(
            lambda opt=opt, closure=closure: opt.step(closure), args.repeats, device=device
        )
        buffers = held_buffers(build(), model, x, y)
        rows.append(
            f"| {name} | {numel / 1e6:.2f}M | {method} | {opt.perturbation.passes} | "
            f"{t * 1e3:.1f} | {t / base_time:.2f}x | {buffers:g} | {REFERENCE_BUFFERS[method]} |"
        )
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=128)
    add_device_argument(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for name, build in MODELS.items():
        rows += measure(name, build, args)
    print(f"{machine(args.device)}, 28x28 inputs, batch {args.batch}, {args.threads} thread(s)\n")
    print(
        "| model | params | optimizer | passes | step ms | ratio to base step "
        "| parameter-sized buffers held | reference implementation |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
