"""The committed reference runs (``results/*/…/config.json``) against today's code: a run whose
method did not change keeps its key (and so its folder); a run of a method whose defaults or
equations changed no longer resolves to its key, so it can never be mistaken for a run of the
new code — ``run`` makes a new folder for it."""

import json
from pathlib import Path

import pytest

from harness.config import RunSpec
from harness.errors import HarnessError

ROOT = Path(__file__).resolve().parents[1]
STORED = sorted(ROOT.glob("results/*/*/*/*/seed*-*/config.json"))
# plugins whose version was bumped by the methods-fidelity issue: their old runs are superseded
CHANGED = {"ferd", "cmi", "fast", "zskt"}


def test_there_are_stored_runs_of_changed_and_unchanged_methods():
    plugins = {json.loads(path.read_text())["plugin"] for path in STORED}
    assert plugins & CHANGED and plugins - CHANGED


@pytest.mark.parametrize("path", STORED, ids=[str(p.parent.relative_to(ROOT / "results")) for p in STORED])
def test_stored_run_keeps_its_key_unless_its_method_changed(path):
    data = json.loads(path.read_text())
    assert path.parent.name.endswith(data["key"])
    if data["plugin"] in CHANGED:
        with pytest.raises(HarnessError, match="resolves to"):
            RunSpec.from_dict(data, str(path))
    else:
        assert RunSpec.from_dict(data, str(path)).key == data["key"]
