"""LearnedOptimizer step time as a ratio to torch.optim.Adam(foreach=True), same model,
one run (``python -m benchmarks.learned_optimizer_speed``).

Gradients are fixed random tensors, so only the optimizer step is timed (median of
repeats, after warm-up). Prints a markdown table. ``--threads`` sets torch's intra-op
threads (1 by default: the benchmark machine's two cores are shared); ``--device cuda``
times the steps on the GPU (each timed call synchronized).
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from benchmarks.common import add_device_argument, device_of, machine, median_time
from learnreg.optim import LearnedOptimizer
from learnreg.optimizers import LSTMRule, MLPRule


def model_of(params: int) -> nn.Module:
    """An MLP of about ``params`` parameters: 1024 -> w -> w -> 10."""
    width = int((-(1024 + 10 + 2) + ((1024 + 12) ** 2 + 4 * params) ** 0.5) / 2)
    return nn.Sequential(
        nn.Linear(1024, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10)
    )


def rules() -> dict[str, callable]:
    return {
        "mlp (32, 32)": lambda: MLPRule(hidden=(32, 32)),
        "mlp (32,)": lambda: MLPRule(hidden=(32,)),
        "mlp (8,)": lambda: MLPRule(hidden=(8,)),
        "lstm 2x20": lambda: LSTMRule(),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e6, 1e7])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(step)")
    parser.add_argument("--lstm-max", type=float, default=1e6, help="largest model for the LSTM")
    parser.add_argument(
        "--compile-chunk",
        type=int,
        default=0,
        help="chunk size for the compiled step (0: the whole vector, one small graph; "
        "a chunked step unrolls into a graph per chunk and compiles for a long time)",
    )
    parser.add_argument("--rules", nargs="+", default=None, help="only these rule rows")
    add_device_argument(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = device_of(args.device)

    def timed(fn, warmup: int = 2) -> float:
        return median_time(fn, args.repeats, warmup=warmup, device=device)

    rows = []
    for size in args.sizes:
        torch.manual_seed(0)
        model = model_of(int(size)).to(device)
        n = sum(p.numel() for p in model.parameters())
        for p in model.parameters():
            p.grad = torch.randn_like(p) * 1e-3
        adam = torch.optim.Adam(model.parameters(), lr=1e-3, foreach=True)
        base = timed(adam.step)
        x = torch.randn(256, 1024, device=device)

        def fwd_bwd(model=model, x=x):
            model(x).square().mean().backward()

        fb = timed(fwd_bwd)
        rows.append((n, "Adam(foreach=True)", "eager", base, 1.0, fb))
        for name, build in rules().items():
            if name.startswith("lstm") and size > args.lstm_max:
                continue
            if args.rules and name not in args.rules:
                continue
            modes = ["eager"] + (["compiled"] if args.compile else [])
            for mode in modes:
                whole = 1 << 40  # one chunk: the whole vector
                chunk = (args.compile_chunk or whole) if mode == "compiled" else None
                opt = LearnedOptimizer(model.parameters(), build(), chunk_size=chunk)
                step = opt.step
                if mode == "compiled":
                    torch._dynamo.reset()
                    step = torch.compile(opt.step)
                t = timed(step, warmup=3 if mode == "compiled" else 2)
                rows.append((n, f"LearnedOptimizer {name}", mode, t, t / base, fb))
                del opt
    print(f"machine: {machine(device)}, threads: {args.threads}\n")
    print("| params | optimizer | mode | step ms | ratio to Adam | step / (fwd+bwd, batch 256) |")
    print("|---:|---|---|---:|---:|---:|")
    for n, name, mode, t, ratio, fb in rows:
        print(f"| {n / 1e6:.1f}M | {name} | {mode} | {t * 1e3:.1f} | {ratio:.1f}x | {t / fb:.2f} |")


if __name__ == "__main__":
    main()
