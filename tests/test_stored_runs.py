"""The committed reference runs (``results/*/…/config.json``) against today's code: a run whose
method did not change keeps its key (and so its folder); a run of a method whose defaults or
equations changed no longer resolves to its key, so it can never be mistaken for a run of the
new code — ``run`` makes a new folder for it. The version is the marker: each run's is read
against its plugin's current one."""

import json
from pathlib import Path

import pytest

from harness.backbone.method import load_plugins
from harness.config import RunSpec
from harness.errors import HarnessError

ROOT = Path(__file__).resolve().parents[1]
STORED = sorted(ROOT.glob("results/*/*/*/*/seed*-*/config.json"))


def current_version(plugin: str) -> str:
    return load_plugins().get(plugin).plugin.version


def test_there_are_stored_runs_of_current_and_superseded_versions():
    versions = {json.loads(path.read_text())["version"] == current_version(json.loads(path.read_text())["plugin"])
                for path in STORED}
    assert versions == {True, False}


@pytest.mark.parametrize("path", STORED, ids=[str(p.parent.relative_to(ROOT / "results")) for p in STORED])
def test_stored_run_keeps_its_key_unless_its_method_changed(path):
    """A run of the plugin's current version resolves to its key (its folder stays); a run of an
    older version (the method's defaults or equations changed since) no longer does."""
    data = json.loads(path.read_text())
    assert path.parent.name.endswith(data["key"])
    if data["version"] != current_version(data["plugin"]):
        with pytest.raises(HarnessError, match="resolves to"):
            RunSpec.from_dict(data, str(path))
    else:
        assert RunSpec.from_dict(data, str(path)).key == data["key"]
