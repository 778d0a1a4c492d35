"""The names the report commands accept, in a module without pandas, seaborn or matplotlib, so
that building the command-line parser (every ``python -m harness ...``) stays fast."""

ATTACKS = ("clean", "fgsm", "pgd20", "cw", "aa")
ATTACK_TITLES = {"clean": "Clean", "fgsm": "FGSM", "pgd20": "PGD-20", "cw": "CW∞", "aa": "AA"}
METRIC_TITLES = {"avg": "Avg", "worst": "Worst", "worst10": "Worst-10%", "nsd": "NSD"}
METRICS = tuple(METRIC_TITLES)
LAYOUTS = ("main", "ablation", "reweighting", "lambdas", "dfkd-vs-dfrd", "layer", "gamma")
PLOT_KINDS = ("per-class", "confusion", "weights", "gamma", "epochs", "samples")
