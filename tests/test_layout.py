"""The layering of docs/architecture.md, checked on the source: ``harness/backbone/`` (the methods'
toolbox) imports nothing from the engine above it, no method imports another method, and nothing
points outside the repository."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ("harness.config", "harness.runner", "harness.report", "harness.cli", "harness.trainer", "harness.worker",
          "harness.estimate", "harness.store", "harness.teacher_training")


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_imported_modules_sees_nested_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import os\n\ndef f():\n    from harness.config import RunSpec\n")
    assert {"os", "harness.config", "harness.config.RunSpec"} <= imported_modules(source)


@pytest.mark.parametrize("path", sorted((ROOT / "harness/backbone").glob("*.py")), ids=lambda p: p.name)
def test_backbone_imports_nothing_from_the_engine(path):
    upward = sorted(m for m in imported_modules(path) if m.startswith(ENGINE))
    assert not upward, f"{path.relative_to(ROOT)} imports {upward}"


@pytest.mark.parametrize("path", sorted((ROOT / "methods").glob("*.py")), ids=lambda p: p.name)
def test_no_method_imports_another(path):
    others = sorted(m for m in imported_modules(path) if m == "methods" or m.startswith("methods."))
    assert not others, f"{path.relative_to(ROOT)} imports {others}: shared pieces belong in harness/backbone/"


def test_nothing_points_outside_the_repository():
    files = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *(ROOT / "harness").rglob("*.py"),
             *(ROOT / "methods").rglob("*.py")]
    offending = [str(p.relative_to(ROOT)) for p in files if "shared/" in p.read_text()]
    assert not offending
    readme = (ROOT / "README.md").read_text()
    assert "docs/architecture.md" in readme and "docs/methods.md" in readme
    assert (ROOT / "docs/architecture.md").is_file() and (ROOT / "docs/methods.md").is_file()


def test_attack_names_have_one_source():
    from harness.attacks import ATTACK_NAMES, ATTACK_TITLES, ATTACKS
    from harness.config import EvalSpec
    from harness.report import names

    assert ATTACK_NAMES == tuple(ATTACKS.names()) == EvalSpec().attacks == names.ATTACKS
    assert names.ATTACK_TITLES is ATTACK_TITLES and set(ATTACK_TITLES) == set(ATTACK_NAMES)
