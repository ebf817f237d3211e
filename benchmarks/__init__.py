"""Speed, memory and quality benchmarks. Run one with ``python -m benchmarks.<name>``;
``python -m benchmarks`` lists them. Each prints a markdown table and the machine."""
