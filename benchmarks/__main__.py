"""``python -m benchmarks``: list the benchmarks and how to run each."""

import pkgutil
from importlib import import_module

import benchmarks

for info in sorted(pkgutil.iter_modules(benchmarks.__path__), key=lambda m: m.name):
    if info.name in ("common", "__main__") or info.name.startswith("_"):
        continue
    doc = (import_module(f"benchmarks.{info.name}").__doc__ or "").strip().split("\n")[0]
    print(f"python -m benchmarks.{info.name:<22} {doc}")
