"""Benchmarks and peer comparisons; one module per study. Results go to benchmarks/results/."""
