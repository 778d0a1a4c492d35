"""Benchmark harness for fair data-free robustness distillation (FERD and baselines)."""

__version__ = "0.1.0"
