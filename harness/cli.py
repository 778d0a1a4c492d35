"""``python -m harness``: the command-line interface.

Each sub-command is a function ``(args) -> exit status`` registered with
:func:`command`; user errors (:class:`HarnessError`) become one line on stderr and
exit status 2. A command imports the engine modules it uses (torch, pandas, matplotlib behind
them) when it runs, not when the parser is built: ``--help`` and a mistyped command answer at
once, and ``table`` never loads matplotlib.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from harness.errors import HarnessError

Handler = Callable[[argparse.Namespace], int]
_COMMANDS: list[tuple[str, str, Callable[[argparse.ArgumentParser], None], Handler]] = []


def command(name: str, help: str, arguments: Callable[[argparse.ArgumentParser], None]) -> Callable[[Handler], Handler]:
    """Register a sub-command: ``arguments`` adds its options, the decorated function runs it."""

    def add(handler: Handler) -> Handler:
        _COMMANDS.append((name, help, arguments, handler))
        return handler

    return add


def _list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=("methods", "models", "datasets"), help="what to list")


@command("list", "list registered methods (and presets), models or datasets", _list_arguments)
def list_names(args: argparse.Namespace) -> int:
    if args.what == "methods":
        from harness.backbone.method import load_plugins

        names = load_plugins().names()
    elif args.what == "models":
        from harness.models import MODELS

        names = MODELS.names()
    else:
        from harness.data import DATASETS

        names = DATASETS.names()
    print("\n".join(names))
    return 0


def _validate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="experiment YAML file")
    parser.add_argument("-v", "--verbose", action="store_true", help="also list every cell and its run folder")


@command("validate", "parse, expand and validate an experiment file; print its number of cells", _validate_arguments)
def validate(args: argparse.Namespace) -> int:
    from harness.config import load_experiment
    from harness.teacher import verify_teachers

    experiment = load_experiment(args.file)
    verify_teachers(experiment.cells, args.file)
    if args.verbose:
        for spec in experiment.cells:
            print(spec.relative_dir())
    count = len(experiment.cells)
    print(f"{args.file}: {count} cell{'s' if count != 1 else ''} (experiment '{experiment.name}')")
    return 0


def _cost_arguments(parser: argparse.ArgumentParser) -> None:
    from harness.gpus import DEFAULT_GPU, PEAK_TFLOPS, SUSTAINED_FRACTION

    gpus = ", ".join(f"{name} {peak:g}" for name, peak in PEAK_TFLOPS.items())
    parser.add_argument("file", help="experiment YAML file")
    parser.add_argument("--gpu", choices=tuple(PEAK_TFLOPS), default=None,
                        help=f"GPU and precision whose throughput sets the GPU-hours (default {DEFAULT_GPU}): "
                             f"{SUSTAINED_FRACTION * 100:.0f} %% of the dense peak TFLOP/s of its data sheet ({gpus})")
    parser.add_argument("--tflops", type=float, default=None,
                        help="sustained TFLOP/s instead (e.g. the one benchmarks/gpu_smoke.py measured)")
    parser.add_argument("--out", help="also write the per-cell numbers as JSON")


@command("cost", "FLOPs, memory and GPU-hours of every cell of a grid, counted before launch", _cost_arguments)
def cost(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from harness.config import load_experiment
    from harness.estimate import cell_labels, estimate_cell, render, throughput
    from harness.store import atomic_write_json

    if args.tflops is not None and args.tflops <= 0:
        raise HarnessError(f"--tflops: must be > 0, got {args.tflops}")
    experiment = load_experiment(args.file)
    tflops, basis = throughput(args.gpu, args.tflops)
    labels = cell_labels(experiment.cells)
    costs = [estimate_cell(spec, label) for spec, label in
             tqdm(list(zip(experiment.cells, labels)), desc="counting", unit="cell", leave=False,
                  disable=not sys.stderr.isatty())]
    print(render(costs, tflops, basis), end="")
    if args.out:
        atomic_write_json(Path(args.out), {"throughput_tflops": tflops, "basis": basis,
                                           "cells": [dataclasses.asdict(c) for c in costs]})
        print(f"wrote {args.out}")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="dataset name (see `list datasets`)")
    parser.add_argument("--model", required=True, help="architecture (see `list models`)")
    parser.add_argument("--checkpoint", required=True, help="state dict file (weights_only loading)")
    parser.add_argument("--attacks", default="clean,fgsm,pgd20,cw,aa", help="comma-separated: clean,fgsm,pgd20,cw,aa")
    parser.add_argument("--aa-version", choices=("standard", "fast"), default="standard",
                        help="AutoAttack: standard, or fast = APGD-CE + APGD-T (label it in tables)")
    parser.add_argument("--n-eval", type=_positive_int, help="class-stratified test subset (default: all)")
    parser.add_argument("--aa-n-eval", type=_positive_int, help="smaller stratified subset for AutoAttack")
    parser.add_argument("--epsilon", type=float, help="L-inf budget (default: the dataset's)")
    parser.add_argument("--step-size", type=float, help="PGD/CW step (default: the dataset's)")
    parser.add_argument("--batch-size", type=_positive_int, default=256)
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--seed", type=int, default=0, help="subset and random-start seed")
    parser.add_argument("--data-root", help="dataset folder (default: $HARNESS_DATA or ./data)")
    parser.add_argument("--download", action="store_true", help="download the dataset if missing")
    parser.add_argument("--out", help="write the JSON report here")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def resolve_device(name: str) -> str:
    """``auto`` is the first GPU when there is one, else the CPU."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HarnessError(f"--device {name}: no CUDA device is available")
    return name


@command("eval", "evaluate a checkpoint under clean, FGSM, PGD-20, CW and AutoAttack, per class", _eval_arguments)
def evaluate_checkpoint(args: argparse.Namespace) -> int:
    from harness.attacks import ATTACKS
    from harness.checkpoint import load_model
    from harness.data import get_dataset
    from harness.evaluate import evaluate, per_class_table
    from harness.store import atomic_write_json

    info = get_dataset(args.dataset)
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    for name in attacks:
        ATTACKS.canonical(name)
    for flag, value in (("--epsilon", args.epsilon), ("--step-size", args.step_size)):
        if value is not None and not 0 < value <= 1:
            raise HarnessError(f"{flag}: must be in (0, 1], got {value}")
    device = resolve_device(args.device)
    model = load_model(args.model, args.checkpoint, info)
    test = info.load("test", args.data_root, args.download)
    result = evaluate(model, test, attacks, epsilon=args.epsilon or info.epsilon,
                      step_size=args.step_size or info.step_size, num_classes=info.num_classes,
                      n_eval=args.n_eval, aa_n_eval=args.aa_n_eval, batch_size=args.batch_size, device=device,
                      seed=args.seed, aa_version=args.aa_version, progress=not args.quiet)
    report = {"model": args.model, "checkpoint": str(args.checkpoint), **result.to_dict(info.name)}
    print(per_class_table(report).to_string(float_format=lambda v: f"{v:.2f}", na_rep="-"))
    if args.out:
        atomic_write_json(args.out, report)
        print(f"wrote {args.out}")
    return 0


def _teacher_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("train", "check"),
                        help="train: adversarial training from a YAML recipe; check: load every distinct "
                             "teacher of an experiment and measure its clean and PGD-20 accuracy")
    parser.add_argument("config", nargs="?",
                        help="train: a teacher recipe (e.g. experiments/teachers/fashion-mnist.yaml); "
                             "check: an experiment file (or use --teacher)")
    parser.add_argument("--teacher", metavar="YAML",
                        help="check: one teacher as a YAML mapping, e.g. "
                             "'{arch: cnn5, checkpoint: teachers/fashion-mnist/cnn5.pt}' (needs --dataset)")
    parser.add_argument("--dataset", help="check: the dataset of --teacher")
    parser.add_argument("--data-root", help="check: the dataset folder of --teacher")
    parser.add_argument("--n", type=int, default=1000, help="check: stratified test images (default 1000)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


@command("teacher", "train a robust teacher (PGD-AT or TRADES), or check the teachers of an experiment",
         _teacher_arguments)
def teacher(args: argparse.Namespace) -> int:
    if args.action == "check":
        return _teacher_check(args)
    if args.config is None or args.teacher is not None:
        raise HarnessError("teacher train: give the recipe file (and no --teacher)")
    from harness.evaluate import per_class_table
    from harness.teacher_training import load_training_config, train_teacher

    config = load_training_config(args.config)
    report = train_teacher(config, device=resolve_device(args.device), progress=not args.quiet,
                           command=f"python -m harness teacher train {args.config}")
    print(per_class_table(report).to_string(float_format=lambda v: f"{v:.2f}", na_rep="-"))
    print(f"wrote {config.output}/{report['checkpoint']} (sha256 {report['sha256'][:12]}…) and its report")
    return 0


def _teacher_check(args: argparse.Namespace) -> int:
    import yaml

    from harness.config import experiment_from_mapping, load_experiment, parse_yaml
    from harness.teacher_check import check_teacher, distinct_teachers

    if (args.config is None) == (args.teacher is None):
        raise HarnessError("teacher check: give an experiment file or --teacher (one of them)")
    if args.n < 1:
        raise HarnessError(f"teacher check: --n must be >= 1 (got {args.n})")
    if args.teacher is not None:
        if args.dataset is None:
            raise HarnessError("teacher check: --teacher needs --dataset")
        try:
            spec = parse_yaml(args.teacher)
        except yaml.YAMLError as error:
            raise HarnessError(f"--teacher: not YAML ({' '.join(str(error).split())[:120]})") from None
        base = {"method": "noise", "student": "resnet8", "dataset": args.dataset, "teacher": spec,
                **({"data_root": args.data_root} if args.data_root else {})}
        experiment = experiment_from_mapping({"name": "teacher-check", "base": base}, "--teacher")
    else:
        experiment = load_experiment(args.config)
    device = resolve_device(args.device)
    for teacher in distinct_teachers(experiment.cells):
        result = check_teacher(teacher, n=args.n, device=device, progress=not args.quiet)
        print("\n".join(result.lines()))
    return 0


def _gpu_list(text: str) -> tuple[int, ...]:
    try:
        gpus = tuple(int(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected GPU indices like 0,1 (got {text!r})") from None
    if not gpus or min(gpus) < 0:
        raise argparse.ArgumentTypeError(f"expected GPU indices like 0,1 (got {text!r})")
    return gpus


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="experiment YAML file")
    parser.add_argument("--results", default="results", help="the run store (default: ./results)")
    parser.add_argument("--mode", choices=("cached", "retry", "force"), default="cached",
                        help="cached: skip done cells, resume interrupted ones; retry: also rerun failed; force: all")
    parser.add_argument("--dry-run", action="store_true", help="list each cell's state and run nothing")
    parser.add_argument("--only", action="append", metavar="KEY=V[,V...]",
                        help="only the cells whose KEY (a grid or cell key: method, seed, ferd.gamma, ...) is one "
                             "of the values; repeat for several keys, all must hold (e.g. --only seed=1 "
                             "--only method=cmi,dfhl)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--executor", choices=("local", "slurm"), help="default: the YAML's executor.kind, else local")
    local = parser.add_argument_group("local executor")
    local.add_argument("--gpus", type=_gpu_list, help="visible GPU indices to use, e.g. 0,1 (default: all)")
    local.add_argument("--workers", type=_positive_int, help="CPU slots without GPUs; jobs per GPU with them")
    local.add_argument("--device", default="auto",
                       help="auto (default: the GPUs, else CPU), cpu (CPU slots only) or cuda:N (that GPU only)")
    slurm = parser.add_argument_group("slurm executor (override executor.slurm)")
    slurm.add_argument("--partition")
    slurm.add_argument("--account")
    slurm.add_argument("--time", type=_positive_int, help="minutes per task")
    slurm.add_argument("--cluster", choices=("slurm", "local", "debug"),
                       help="local/debug: run the job array through submitit on this machine")
    slurm.add_argument("--wait", action="store_true", help="wait for the submitted array to finish")


def _executor(args: argparse.Namespace, experiment, results):
    """The executor the flags and the YAML's ``executor:`` block ask for."""

    settings = experiment.executor
    if (args.executor or settings.kind) == "slurm":
        from harness.runner.slurm import SlurmExecutor

        overrides = {k: getattr(args, k) for k in ("partition", "account", "time", "cluster")
                     if getattr(args, k) is not None}
        return SlurmExecutor(replace(settings.slurm, **overrides), results, wait=args.wait)
    from harness.runner.local import LocalExecutor, local_slots

    gpus, cpu = args.gpus or settings.gpus, args.device == "cpu"
    if args.device.startswith("cuda"):
        index = resolve_device(args.device).partition(":")[2]
        if index:
            if not index.isdigit():
                raise HarnessError(f"--device: expected auto, cpu, cuda or cuda:N (got {args.device!r})")
            gpus = (int(index),)
    elif args.device not in ("auto", "cpu"):
        raise HarnessError(f"--device: expected auto, cpu, cuda or cuda:N (got {args.device!r})")
    return LocalExecutor(local_slots(list(gpus) if gpus else None, args.workers or settings.workers, cpu=cpu))


@command("run", "validate an experiment and run (or submit) its pending cells", _run_arguments)
def run(args: argparse.Namespace) -> int:
    from harness.config import load_experiment, select_cells
    from harness.runner import check_results_folder, run_experiment, selected
    from harness.store import cell_state
    from harness.teacher import verify_teachers

    grid = load_experiment(args.file)
    experiment = select_cells(grid, args.only, args.file) if args.only else grid
    results = Path(args.results)
    if args.dry_run:
        for spec in experiment.cells:
            state = cell_state(results / spec.relative_dir())
            action = "run" if selected(state, args.mode) else "skip"
            print(f"{state:<12} {action:<5} {spec.relative_dir()}")
        return 0
    verify_teachers(experiment.cells, args.file)
    executor = _executor(args, experiment, results)
    _warn_emulated_bf16(experiment, args.device)
    check_results_folder(results)
    print(_launch_summary(experiment, results, args.mode, args.file))
    outcome = run_experiment(experiment, results, executor, mode=args.mode, progress=not args.quiet)
    parts = [f"{outcome[k]} {k}" for k in ("done", "failed", "interrupted", "submitted") if outcome[k]]
    if outcome["busy"] or outcome["running"]:
        parts.append(f"{outcome['busy'] + outcome['running']} running elsewhere")
    if outcome["failed earlier"]:
        parts.append(f"{outcome['failed earlier']} failed earlier (--mode retry reruns them)")
    parts.append(f"{outcome['skipped']} skipped (already finished)")
    print(f"{experiment.name}: " + ", ".join(parts))
    if grid.report:  # written once the whole grid is done, whichever cells --only ran
        unfinished = sum(cell_state(results / spec.relative_dir()) != "done" for spec in grid.cells)
        if unfinished:
            print(f"report: not written, {unfinished} of {len(grid.cells)} cells are not finished",
                  file=sys.stderr)
        else:
            for path in _write_reports(grid, results):
                print(f"wrote {path}")
    return 1 if outcome["failed"] or outcome["interrupted"] else 0


def _launch_summary(experiment, results: Path, mode: str, shown: str) -> str:
    """What ``run`` is about to do: the cells it will run and their student and generator steps."""
    from harness.runner import selected
    from harness.store import cell_state

    chosen = [spec for spec in experiment.cells if selected(cell_state(results / spec.relative_dir()), mode)]
    student = sum((s.settings.schedule.epochs - s.settings.schedule.warmup_epochs) * s.settings.schedule.student_steps
                  for s in chosen)
    generator = sum(s.settings.schedule.epochs * s.settings.schedule.generator_steps
                    for s in chosen if s.entry.plugin.synthesizes)
    return (f"{experiment.name}: {len(chosen)} of {len(experiment.cells)} cells to run: {student:,} student steps "
            f"and {generator:,} generator steps in all (FLOPs and GPU-hours: python -m harness cost {shown})")


def _warn_emulated_bf16(experiment, device: str) -> None:
    """One line when bf16 cells will run on a CPU that has no native bf16 (autocast is emulated there)."""
    if not any(spec.settings.precision == "bf16" for spec in experiment.cells):
        return
    from harness.backbone.devices import cpu_has_native_bf16

    if resolve_device(device) == "cpu" and cpu_has_native_bf16() is False:
        print("warning: precision bf16 on a CPU without AVX-512 BF16 or AMX (no such flag in /proc/cpuinfo): "
              "autocast is emulated there, about 10× slower than fp32 (reports/gpu/README.md)", file=sys.stderr)


def _write_reports(experiment, results) -> list:
    """The outputs of the experiment's ``report:`` list, under reports/<name>/ (tables as md and csv,
    figures as PNG; file names start with the YAML file's stem when it is a view of another
    experiment's store). A figure the finished rows cannot give (class weights from a grid that
    has no reweighting method) is named on stderr and skipped; the others are still written."""
    from harness.report.collect import open_store
    from harness.report.tables import build_table, render
    from harness.store import atomic_write_bytes

    store = open_store(str(experiment.path), results)
    out = Path("reports") / experiment.name
    paths = []
    if "table" in experiment.report:
        table = build_table(store)
        for fmt in ("md", "csv"):
            paths.append(out / f"{store.file_prefix}table.{fmt}")
            atomic_write_bytes(paths[-1], render(table, fmt).encode())
    figures = [output for output in experiment.report if output != "table"]
    if figures:  # matplotlib only when a figure is asked for
        from harness.report.plots import PlotOptions, plot_each

        drawn, skipped = plot_each(figures, store, PlotOptions(out, formats=("png",), prefix=store.file_prefix))
        paths += drawn
        for kind, why in skipped.items():
            print(f"report: {kind} not drawn: {why}", file=sys.stderr)
    return paths


def _status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="experiment YAML file")
    parser.add_argument("--results", default="results", help="the run store (default: ./results)")


@command("status", "print the state of every cell of an experiment (and the errors of failed runs)",
         _status_arguments)
def status(args: argparse.Namespace) -> int:
    from harness.config import load_experiment
    from harness.runner.status import grid_status

    experiment = load_experiment(args.file)
    table = grid_status(experiment, Path(args.results))
    shown = table.drop(columns=["error", "damage"])
    print(shown.astype(object).where(shown.notna(), "-").to_string(index=False))
    counts = table["state"].value_counts()
    print(f"{experiment.name}: " + ", ".join(f"{n} {state}" for state, n in counts.items()))
    unfinished = table[table["state"] != "done"]
    if len(unfinished):
        unknown = int(unfinished["left_min"].isna().sum())
        if unknown == len(unfinished):
            print(f"left: unknown ({unknown} cell(s) of a method with none finished)")
        else:
            print(f"left: about {int(unfinished['left_min'].sum())} min of cell time by the median of the "
                  f"grid's finished cells of each method, on the machines that ran them (divide by the "
                  f"workers running at once)" + (f"; {unknown} cell(s) of a method with none finished" if unknown else ""))
    for _, row in table[table["state"] == "failed"].iterrows():
        print(f"failed: {row['run']}: {row['error']}")
    for _, row in table[table["damage"] != ""].iterrows():
        print(f"damaged: {row['run']}: {row['damage']} (run resumes or restarts it, saying which)")
    return 0


def _experiment_source(args: argparse.Namespace) -> str:
    """The experiment named on the command line, else the only experiment in the store."""
    if args.experiment:
        return args.experiment
    results = Path(args.results)
    names = sorted(p.name for p in results.iterdir() if p.is_dir() and any(p.glob("*/*/*/seed*-*/config.json"))) \
        if results.is_dir() else []
    if len(names) != 1:
        found = f"it holds {', '.join(names)}" if names else "it holds no runs"
        raise HarnessError(f"name an experiment (a YAML file or a folder of {results}); {found}")
    return names[0]


def _table_arguments(parser: argparse.ArgumentParser) -> None:
    from harness.report.names import METRICS

    parser.add_argument("experiment", nargs="?", help="experiment YAML file (shows missing cells) or name in the store")
    parser.add_argument("--metric", choices=(*METRICS, "all"),
                        help="one metric per attack (default: the paper's Avg, Worst [Worst-10%% for >= 100 "
                             "classes], NSD)")
    parser.add_argument("--attacks", help="comma-separated subset of clean,fgsm,pgd20,cw,aa (default: all evaluated)")
    parser.add_argument("--layout", help="main, ablation, dfkd-vs-dfrd or a view a method declares (FERD: "
                                          "reweighting, lambdas, layer, gamma); default: chosen from the experiment")
    parser.add_argument("--format", choices=("md", "tex", "csv"), help="default: from --out's suffix, else md")
    parser.add_argument("--out", help="write to this file instead of standard output")
    parser.add_argument("--cost", action="store_true", help="add wall time and teacher queries per row")
    parser.add_argument("--vs", metavar="ROW",
                        help="mark each row's cells ▲/▼ where its difference from ROW (a row of the same student, "
                             "e.g. cmi) is established at 95%% (see `compare`)")
    parser.add_argument("--results", default="results", help="the run store (default: ./results)")


@command("table", "paper-style table of an experiment from the store (Markdown, LaTeX or CSV)", _table_arguments)
def table(args: argparse.Namespace) -> int:
    from harness.report.collect import open_store
    from harness.report.tables import build_table, render

    fmt = _output_format(args, ("md", "tex", "csv"))
    store = open_store(_experiment_source(args), args.results)
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()] if args.attacks else None
    _emit(render(build_table(store, args.layout, args.metric, attacks, args.cost, args.vs), fmt), args.out)
    return 0


def _output_format(args: argparse.Namespace, formats: tuple[str, ...]) -> str:
    """``--format``, else the suffix of ``--out``, else md."""
    fmt = args.format or (Path(args.out).suffix.lstrip(".") if args.out else "md")
    if fmt not in formats:
        raise HarnessError(f"--out: cannot tell the format from '{args.out}'; give --format {'|'.join(formats)}")
    return fmt


def _emit(text: str, out: str | None) -> None:
    """``text`` to the file ``out`` (atomically, saying so) or to standard output."""
    from harness.store import atomic_write_bytes

    if out:
        atomic_write_bytes(Path(out), text.encode())
        print(f"wrote {out}")
    else:
        print(text, end="")


def _compare_arguments(parser: argparse.ArgumentParser) -> None:
    from harness.report.names import METRICS

    parser.add_argument("experiment", help="experiment YAML file or name in the store")
    parser.add_argument("a", help="row A: a method (when it has one row) or a row label such as 'ferd (gamma=0.3)'")
    parser.add_argument("b", help="row B, the same way")
    parser.add_argument("--attacks", help="comma-separated subset of clean,fgsm,pgd20,cw,aa (default: all evaluated)")
    parser.add_argument("--metrics", default="avg,worst,nsd",
                        help=f"comma-separated subset of {','.join(METRICS)} (default: avg,worst,nsd)")
    parser.add_argument("--samples", type=_positive_int, default=4000, help="bootstrap replicates (default 4000)")
    parser.add_argument("--level", type=float, default=0.95, help="interval level (default 0.95)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--format", choices=("md", "csv"), help="default: from --out's suffix, else md")
    parser.add_argument("--out", help="write to this file instead of standard output")
    parser.add_argument("--results", default="results", help="the run store (default: ./results)")


@command("compare", "paired differences A − B over seeds with 95 % intervals (Student-t over seeds, bootstrap over test images)",
         _compare_arguments)
def compare(args: argparse.Namespace) -> int:
    from harness.report.collect import open_store
    from harness.report.compare import compare_rows, render_comparisons
    from harness.report.names import ATTACKS, METRICS

    fmt = _output_format(args, ("md", "csv"))
    if not 0 < args.level < 1:
        raise HarnessError(f"--level: {args.level} is not between 0 and 1")
    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()] if args.attacks else None
    for flag, names, known in (("--metrics", metrics, METRICS), ("--attacks", attacks or [], ATTACKS)):
        unknown = [n for n in names if n not in known]
        if unknown or (flag == "--metrics" and not names):
            raise HarnessError(f"{flag}: unknown '{(unknown or [''])[0]}' (choose from {', '.join(known)})")
    store = open_store(args.experiment, args.results)
    comparisons = compare_rows(store, args.a, args.b, attacks=attacks, metrics=metrics, samples=args.samples,
                               level=args.level, seed=args.seed)
    _emit(render_comparisons(comparisons, fmt), args.out)
    return 0


def _plot_arguments(parser: argparse.ArgumentParser) -> None:
    from harness.report.names import PLOT_KINDS

    parser.add_argument("kind", choices=(*PLOT_KINDS, "all"),
                        help="the figure (all: every kind the experiment has data for)")
    parser.add_argument("experiment", nargs="?", help="experiment YAML file or name in the store")
    parser.add_argument("--attacks", help="comma-separated subset of clean,fgsm,pgd20,cw,aa")
    parser.add_argument("--param", default="gamma", help="gamma: the swept hyper-parameter (default: gamma)")
    parser.add_argument("--formats", default="png,pdf", help="comma-separated file formats (default: png,pdf)")
    parser.add_argument("--out", help="output folder (default: reports/<experiment>; files named "
                                      "<file stem>-<kind> for a YAML file that views another experiment's store)")
    parser.add_argument("--results", default="results", help="the run store (default: ./results)")


@command("plot", "the paper's figures of an experiment from the store, as PNG and PDF", _plot_arguments)
def plot(args: argparse.Namespace) -> int:
    from harness.report.collect import open_store
    from harness.report.plots import KINDS, PlotOptions, plot_each
    from harness.report.plots import plot as draw

    store = open_store(_experiment_source(args), args.results)
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    unknown = [f for f in formats if f not in ("png", "pdf", "svg")]
    if unknown or not formats:
        raise HarnessError(f"--formats: '{args.formats}' (choose from png, pdf, svg)")
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()] if args.attacks else None
    options = PlotOptions(Path(args.out or Path("reports") / store.name), attacks, formats, args.param,
                          store.file_prefix)
    if args.kind != "all":
        paths = draw(args.kind, store, options)
    else:
        paths, skipped = plot_each(KINDS, store, options)
        for kind, why in skipped.items():
            print(f"{kind}: skipped ({why})", file=sys.stderr)
    for path in paths:
        print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m harness",
        description="Benchmark harness for fair data-free robustness distillation (FERD and baselines).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text, arguments, handler in _COMMANDS:
        sub = subparsers.add_parser(name, help=help_text.replace("%", "%%"), description=help_text)
        arguments(sub)
        sub.set_defaults(handler=handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly, as Unix tools do
        sys.stdout = None  # type: ignore[assignment]  # nothing more to flush at exit
        return 141
