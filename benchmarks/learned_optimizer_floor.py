"""The MLP rule's step against its arithmetic floor on this CPU
(``python -m benchmarks.learned_optimizer_floor``; issue 17, item 3).

The floor of one ``LearnedOptimizer`` step at n parameters is
``max(FLOPs / peak FLOP rate, bytes / memory bandwidth)``, with

* FLOPs per coordinate: the MLP's multiply-adds (``2 · Σ fan_in · fan_out``, the
  progress features enter as one bias shared by every coordinate) plus the
  per-coordinate feature and moment arithmetic (:data:`ELEMENTWISE_FLOPS`);
* bytes per coordinate: what the step must read and write once: the gradient and the
  parameter gathered into flat vectors (read 4 + write 4 each), the rule reading them
  and its 5 state rows and writing the 5 rows and the update, and the update applied
  to the parameter (read 8, write 4), float32;
* the peak FLOP rate of a large square float32 matmul and the bandwidth of a large
  elementwise add (``z = x + y``, 12 bytes per element), measured here, one thread.

It also reports the rate the rule's own matrix products reach (its layer shapes over a
chunk), the practical ceiling for any implementation that calls the BLAS. Steps are
timed interleaved (Adam(foreach), eager, compiled) after asserting that the compiled
step gives the eager one's parameters and state.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch
from torch import nn

from benchmarks.common import machine
from benchmarks.learned_optimizer_speed import model_of
from learnreg.optim import LearnedOptimizer
from learnreg.optimizers import MLPRule

#: elementwise FLOPs per coordinate of the MLP rule's features and moments, about (counted
#: in MLPRule.update: 5 lerps at 3, v̂ and √v̂ and 1/δ ~7, the 6 features ~10, the skip
#: product 12, the output's exp and scaling ~5; biases and ReLUs are in the MLP term)
ELEMENTWISE_FLOPS = 50
#: float32: gather g and p (read + write each), the rule reads g, p and 5 state rows and
#: writes 5 rows and the update, the update applied (read update and p, write p)
BYTES_PER_COORDINATE = 4 * (4 + 2 + 5 + 5 + 1 + 3)


def mlp_flops(rule: MLPRule) -> int:
    """Multiply-adds ×2 (plus biases and ReLUs) of the rule's MLP per coordinate."""
    layers = [m for m in rule.net if isinstance(m, nn.Linear)]
    total = 0
    for i, layer in enumerate(layers):
        fan_in = rule.num_features if i == 0 else layer.in_features
        total += 2 * fan_in * layer.out_features + 2 * layer.out_features  # bias, ReLU
    return total


def machine_probes(rule: MLPRule, chunk: int) -> dict[str, tuple[callable, float]]:
    """Work whose rate bounds the step: name -> (function, units of work per call).

    ``peak`` a square float32 matmul (FLOPs), ``rule matmuls`` the rule's MLP over one
    chunk of features (FLOPs), ``add`` a large elementwise add (bytes moved)."""
    a, b = torch.randn(1536, 1536), torch.randn(1536, 1536)
    features = torch.randn(rule.num_features, chunk)
    t = torch.tensor(10.0)
    x, y = torch.randn(1 << 25), torch.randn(1 << 25)
    z = torch.empty_like(x)

    def rule_mlp():
        with torch.no_grad():
            rule._mlp(features, t, torch.float32)

    return {
        "peak": (lambda: a @ b, 2 * 1536**3),
        "rule matmuls": (rule_mlp, mlp_flops(rule) * chunk),
        "add": (lambda: torch.add(x, y, out=z), 12 * x.numel()),
    }


def interleaved(fns: dict[str, callable], repeats: int, steps: int) -> dict[str, list[float]]:
    """Seconds per call of each function in each round; a round times every function in
    turn (``steps`` calls each), so machine load slows a round's entries alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            times[name].append((time.perf_counter() - start) / steps)
    return times


def optimizers(size: int, hidden: tuple[int, ...]):
    """Three copies of a model with fixed random gradients: Adam, eager and compiled rule
    (the rule's last layer random, so the MLP's output matters)."""
    torch.manual_seed(0)
    model = model_of(size)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    rule = MLPRule(hidden=hidden)
    with torch.no_grad():
        for p in rule.net[-1].parameters():
            p.normal_(0.0, 0.1)
    copies = [copy.deepcopy(model) for _ in range(3)]
    for twin in copies:
        for p, q in zip(model.parameters(), twin.parameters()):
            q.grad = p.grad.clone()
    adam = torch.optim.Adam(copies[0].parameters(), lr=1e-3, foreach=True)
    eager = LearnedOptimizer(copies[1].parameters(), copy.deepcopy(rule))
    fast = LearnedOptimizer(copies[2].parameters(), copy.deepcopy(rule), compile=True)
    return rule, copies, adam, eager, fast


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=float, default=1e6)
    parser.add_argument("--hidden", type=int, nargs="+", default=[32, 32])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3, help="calls per timed block")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    rule, models, adam, eager, fast = optimizers(int(args.size), tuple(args.hidden))
    n = sum(p.numel() for p in models[0].parameters())
    start = time.perf_counter()
    fast.step()
    compile_s = time.perf_counter() - start
    fast.step()  # the second chunk shape, if any, compiled too
    eager.step(), eager.step()
    for p, q in zip(models[1].parameters(), models[2].parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-8)
    probes = machine_probes(rule, rule.chunk_size)
    steps = {"Adam(foreach=True)": adam.step, "eager": eager.step, "compiled": fast.step}
    times = interleaved(
        {**steps, **{name: fn for name, (fn, _) in probes.items()}}, args.repeats, args.steps
    )
    rates = {name: [work / t for t in times[name]] for name, (_, work) in probes.items()}
    flops = mlp_flops(rule) + ELEMENTWISE_FLOPS
    # the floor of each round, from that round's measured rates
    floors = [
        max(flops * n / peak, BYTES_PER_COORDINATE * n / bandwidth)
        for peak, bandwidth in zip(rates["peak"], rates["add"])
    ]
    shaped = [mlp_flops(rule) * n / r for r in rates["rule matmuls"]]
    med = statistics.median
    print(f"machine: {machine('cpu')}, load average {load:.1f} -> {os.getloadavg()[0]:.1f}")
    print(
        f"rule mlp {tuple(args.hidden)}, {n / 1e6:.2f}M parameters: {flops} FLOPs and "
        f"{BYTES_PER_COORDINATE} bytes per coordinate; rounds: {args.repeats}\n"
        f"measured (medians): peak matmul {med(rates['peak']) / 1e9:.1f} GFLOP/s, the rule's "
        f"matmuls {med(rates['rule matmuls']) / 1e9:.1f} GFLOP/s, add "
        f"{med(rates['add']) / 1e9:.1f} GB/s\n"
        f"floor {med(floors) * 1e3:.1f} ms (FLOP-bound where the FLOP term is larger); the "
        f"rule's matmuls alone at their own measured rate {med(shaped) * 1e3:.1f} ms; first "
        f"compiled step (compile included) {compile_s:.1f} s\n"
    )
    print("| step | ms (median) | / floor (median of rounds) | / Adam(foreach) |")
    print("|---|---:|---:|---:|")
    adam_t = times["Adam(foreach=True)"]
    rows = {"floor": floors, "rule matmuls only": shaped, **{k: times[k] for k in steps}}
    for name, ts in rows.items():
        over_floor = med([t / f for t, f in zip(ts, floors)])
        over_adam = med([t / a for t, a in zip(ts, adam_t)])
        print(f"| {name} | {med(ts) * 1e3:.1f} | {over_floor:.2f}x | {over_adam:.1f}x |")


if __name__ == "__main__":
    main()
