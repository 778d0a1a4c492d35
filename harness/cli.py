"""``python -m harness``: the command-line interface.

Each sub-command is a function ``(args) -> exit status`` registered with
:func:`command`; user errors (:class:`HarnessError`) become one line on stderr and
exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

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

    experiment = load_experiment(args.file)
    if args.verbose:
        for spec in experiment.cells:
            print(spec.relative_dir())
    count = len(experiment.cells)
    print(f"{args.file}: {count} cell{'s' if count != 1 else ''} (experiment '{experiment.name}')")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m harness",
        description="Benchmark harness for fair data-free robustness distillation (FERD and baselines).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text, arguments, handler in _COMMANDS:
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
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
