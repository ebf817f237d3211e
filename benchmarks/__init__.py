"""Speed and quality benchmarks; each module runs as ``python -m benchmarks.<name>`` and
prints a markdown table."""
