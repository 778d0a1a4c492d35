"""The Markdown report of a trained teacher: recipe, command, cost, SHA-256 and per-class accuracy.

Renders the ``report.json`` that :func:`harness.teacher_training.train_teacher` writes; the
per-class table is :func:`harness.evaluate.per_class_table` (pandas is imported only when
a report is rendered).
"""

from __future__ import annotations

from harness.evaluate import per_class_table


def markdown_report(report: dict) -> str:
    """A readable teacher report: recipe, command, cost, SHA-256 and the per-class table."""
    config = report["config"]
    threat = config["threat"]
    table = per_class_table(report).to_markdown(floatfmt=".2f")
    worst = {name: (m["worst"], report["class_names"][min(range(len(m["per_class"])),
             key=lambda i: m["per_class"][i] if m["per_class"][i] is not None else 1e9)])
             for name, m in report["attacks"].items()}
    lines = [
        f"# Teacher: {report['arch']} on {report['dataset']}",
        "",
        f"- recipe: {config['objective']}"
        + (f" (β = {config['trades_beta']})" if config["objective"] == "trades" else "")
        + f", ε = {threat['epsilon']:.4g}, step {threat['step_size']:.4g}, {threat['train_steps']} attack steps;"
        f" SGD lr {config['lr']} ({config['lr_schedule']}), momentum {config['momentum']},"
        f" weight decay {config['weight_decay']}, batch {config['batch_size']}, {config['epochs']} epochs,"
        f" augmentation {'on' if config['augment'] else 'off'}, seed {config['seed']}",
        f"- command: `{report['command']}`",
        f"- training wall time: {report['train_seconds'] / 60:.1f} min; evaluation: "
        f"{report['eval_seconds'] / 60:.1f} min ({report['environment']['device']}, "
        f"{report['environment']['threads']} threads, torch {report['environment']['torch']})",
        f"- weights: `{report['checkpoint']}`, SHA-256 `{report['sha256']}`",
        f"- evaluated on {report['n_eval']} test images (AutoAttack {report['aa_version']}"
        f" on {report['attacks'].get('aa', {}).get('n', 0)} of them)",
        "",
        "Per-class accuracy (%) under every attack; Avg, Worst, Worst-10% in %, NSD as a fraction:",
        "",
        table,
        "",
        "Worst class per attack: " + "; ".join(f"{n}: {c} {w:.1f} %" for n, (w, c) in worst.items()),
        "",
    ]
    return "\n".join(lines)
