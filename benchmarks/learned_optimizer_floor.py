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


def rate(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine_rates(rule: MLPRule, chunk: int, repeats: int) -> dict[str, float]:
    """Peak matmul GFLOP/s, the rule's own matmul GFLOP/s over a chunk, and GB/s."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    peak = 2 * 2048**3 / rate(lambda: a @ b, repeats) / 1e9
    features = torch.randn(rule.num_features, chunk)
    t = torch.tensor(10.0)
    with torch.no_grad():
        per_chunk = rate(lambda: rule._mlp(features, t, torch.float32), repeats * 4)
    shaped = mlp_flops(rule) * chunk / per_chunk / 1e9
    x, y = torch.randn(1 << 25), torch.randn(1 << 25)
    z = torch.empty_like(x)
    bandwidth = 12 * x.numel() / rate(lambda: torch.add(x, y, out=z), repeats) / 1e9
    return {"peak_gflops": peak, "rule_gemm_gflops": shaped, "bandwidth_gbs": bandwidth}


def interleaved(fns: dict[str, callable], repeats: int, steps: int) -> dict[str, float]:
    """Median ms per call of each function, timed in alternating blocks of ``steps``."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            times[name].append((time.perf_counter() - start) / steps * 1e3)
    return {name: statistics.median(ts) for name, ts in times.items()}


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
    rates = machine_rates(rule, rule.chunk_size, args.repeats)
    flops = mlp_flops(rule) + ELEMENTWISE_FLOPS
    floor_flop = flops * n / (rates["peak_gflops"] * 1e9) * 1e3
    floor_bytes = BYTES_PER_COORDINATE * n / (rates["bandwidth_gbs"] * 1e9) * 1e3
    shaped = mlp_flops(rule) * n / (rates["rule_gemm_gflops"] * 1e9) * 1e3
    floor = max(floor_flop, floor_bytes)
    ms = interleaved(
        {"Adam(foreach=True)": adam.step, "eager": eager.step, "compiled": fast.step},
        args.repeats,
        args.steps,
    )
    print(f"machine: {machine('cpu')}, load average {load:.1f} -> {os.getloadavg()[0]:.1f}")
    print(
        f"rule mlp {tuple(args.hidden)}, {n / 1e6:.2f}M parameters: {flops} FLOPs and "
        f"{BYTES_PER_COORDINATE} bytes per coordinate\n"
        f"measured: peak matmul {rates['peak_gflops']:.1f} GFLOP/s, the rule's matmuls "
        f"{rates['rule_gemm_gflops']:.1f} GFLOP/s, add {rates['bandwidth_gbs']:.1f} GB/s\n"
        f"floor: {floor:.1f} ms (FLOPs {floor_flop:.1f} ms, bytes {floor_bytes:.1f} ms); "
        f"the rule's matmuls alone at their measured rate: {shaped:.1f} ms; "
        f"first compiled step (compile included) {compile_s:.1f} s\n"
    )
    print("| step | ms | / floor | / Adam(foreach) |")
    print("|---|---:|---:|---:|")
    print(f"| floor | {floor:.1f} | 1.00x | {floor / ms['Adam(foreach=True)']:.1f}x |")
    for name, t in ms.items():
        print(f"| {name} | {t:.1f} | {t / floor:.2f}x | {t / ms['Adam(foreach=True)']:.1f}x |")


if __name__ == "__main__":
    main()
