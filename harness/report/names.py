"""The names the report commands accept, in a module without torch, pandas, seaborn or matplotlib, so
that building the command-line parser (every ``python -m harness ...``) stays fast. Attack names and
titles come from the attack registry (harness/attacks.py), their one source, on first use."""

from typing import Any

METRIC_TITLES = {"avg": "Avg", "worst": "Worst", "worst10": "Worst-10%", "nsd": "NSD"}
METRICS = tuple(METRIC_TITLES)
PLOT_KINDS = ("per-class", "confusion", "weights", "gamma", "epochs", "samples")


def __getattr__(name: str) -> Any:
    """``ATTACKS`` (the registered attack names) and ``ATTACK_TITLES``, read from harness.attacks."""
    if name == "ATTACKS":
        from harness.attacks import ATTACK_NAMES

        return ATTACK_NAMES
    if name == "ATTACK_TITLES":
        from harness.attacks import ATTACK_TITLES

        return ATTACK_TITLES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
