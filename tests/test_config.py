"""Experiment files: expansion, includes, excludes, run keys and every kind of bad input."""

import textwrap

import pytest

from harness.config import ConfigError, load_experiment

BASE = """
base:
  dataset: synthetic
  student: resnet8
  teacher: {arch: cnn5, checkpoint: teachers/a/cnn5.pt}
  schedule: {epochs: 2, warmup_epochs: 0, generator_steps: 1, student_steps: 1, batch_size: 8}
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load(tmp_path, text, name="exp.yaml"):
    return load_experiment(write(tmp_path, name, text))


def error_of(tmp_path, text, name="exp.yaml"):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, name)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_grid_is_a_cartesian_product_with_presets_and_method_params(tmp_path):
    experiment = load(tmp_path, BASE + """
grid:
  method: [toy, toy-zero]
  seed: [0, 1]
  toy.gamma: [0.1, 0.5]
""")
    cells = experiment.cells
    # toy: 2 seeds x 2 gammas; toy-zero fixes gamma = 0, so its gamma grid collapses.
    assert len(cells) == 6
    toy = sorted((c.settings.seed, c.params.gamma) for c in cells if c.method == "toy")
    assert toy == [(0, 0.1), (0, 0.5), (1, 0.1), (1, 0.5)]
    assert sorted(c.params.gamma for c in cells if c.method == "toy-zero") == [0.0, 0.0]
    assert experiment.name == "exp"
    assert len({c.key for c in cells}) == 6


def test_defaults_resolve_dataset_budget_and_per_dataset_method_defaults(tmp_path):
    (cell,) = load(tmp_path, BASE + "  method: toy\n").cells
    assert cell.settings.threat.epsilon == pytest.approx(8 / 255)
    assert cell.settings.threat.step_size == pytest.approx(2 / 255)
    assert cell.params.steps == 5  # Toy.default_params("synthetic")
    assert cell.settings.schedule.epochs == 2


def test_method_blocks_and_presets_layer_in_order(tmp_path):
    cells = load(tmp_path, BASE + """
methods:
  toy: {gamma: 0.7, mode: code}
  toy-zero: {steps: 3}
grid:
  method: [toy, toy-zero]
""").cells
    by_name = {c.method: c.params for c in cells}
    assert (by_name["toy"].gamma, by_name["toy"].mode) == (0.7, "code")
    # the preset's fixed gamma wins over the plugin block; its own block wins last
    assert (by_name["toy-zero"].gamma, by_name["toy-zero"].steps, by_name["toy-zero"].mode) == (0.0, 3, "code")


def test_numbers_written_as_text_and_fractions(tmp_path):
    base = BASE.replace("batch_size: 8}", "batch_size: 8, weight_decay: 5e-4}")
    (cell,) = load(tmp_path, base + """
  method: toy
  threat: {epsilon: 8/255, step_size: "2/255"}
""").cells
    assert cell.settings.threat.epsilon == pytest.approx(8 / 255)
    assert cell.settings.schedule.weight_decay == pytest.approx(5e-4)


def test_run_key_is_stable_and_ignores_order_paths_and_data_root(tmp_path):
    a = load(tmp_path, BASE + "  method: toy\n  seed: 3\n", "a.yaml").cells[0]
    reordered = """
base:
  seed: 3
  data_root: /somewhere/else
  method: toy
  teacher: {checkpoint: /other/dir/cnn5.pt, arch: cnn5}
  schedule: {batch_size: 8, student_steps: 1, generator_steps: 1, warmup_epochs: 0, epochs: 2}
  student: resnet8
  dataset: synthetic
name: a
"""
    b = load(tmp_path, reordered, "b.yaml").cells[0]
    assert a.key == b.key
    assert a.relative_dir() == b.relative_dir()
    assert str(a.relative_dir()).startswith("a/synthetic/toy/resnet8/seed3-")
    c = load(tmp_path, BASE + "  method: toy\n  seed: 4\n", "a.yaml").cells[0]
    d = load(tmp_path, BASE + "  method: toy\n  seed: 3\nmethods: {toy: {steps: 6}}\n", "a.yaml").cells[0]
    assert len({a.key, c.key, d.key}) == 3


def test_aliases_resolve_to_canonical_names(tmp_path):
    (cell,) = load(tmp_path, BASE.replace("dataset: synthetic", "dataset: fmnist") + "  method: toy\n").cells
    assert cell.settings.dataset == "fashion-mnist"
    assert cell.settings.threat.epsilon == pytest.approx(0.1)


def test_include_merges_underneath_and_exclude_removes(tmp_path):
    write(tmp_path, "common.yaml", BASE + "grid:\n  method: [toy, toy-code]\n  seed: [0, 1, 2]\n")
    experiment = load(tmp_path, """
include: common.yaml
name: ablation
base:
  schedule: {epochs: 3}
exclude:
  - {method: toy-code, seed: [1, 2]}
""")
    assert experiment.name == "ablation"
    assert len(experiment.cells) == 4
    assert {c.settings.schedule.epochs for c in experiment.cells} == {3}
    assert {c.settings.schedule.batch_size for c in experiment.cells} == {8}


def test_exclude_compares_numbers_as_numbers(tmp_path):
    experiment = load(tmp_path, BASE + """grid:
  method: [toy]
  toy.gamma: [1/6, 0.5, 5/6]
  seed: [0, 1]
exclude:
  - {toy.gamma: [5/6, "1e-0"], seed: 1}
  - {toy.gamma: 0.50, seed: [0]}
""")
    cells = {(round(c.params.gamma, 4), c.settings.seed) for c in experiment.cells}
    assert cells == {(0.1667, 0), (0.1667, 1), (0.5, 1), (0.8333, 0)}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (BASE + "  method: fred\n", "exp.yaml: base.method: unknown method 'fred'"),
        (BASE + "grid:\n  method: [toy, toyy]\n", "grid.method[1]: unknown method 'toyy' (did you mean 'toy'?)"),
        (BASE.replace("resnet8", "resnet9") + "  method: toy\n", "base.student: unknown model 'resnet9' (did you mean 'resnet8'?)"),
        (BASE.replace("synthetic", "cifar11") + "  method: toy\n", "base.dataset: unknown dataset 'cifar11' (did you mean 'cifar10'?)"),
        (BASE + "  method: toy\n  schedul: {}\n", "base.schedul: unknown key (did you mean 'schedule'?)"),
        (BASE.replace("epochs: 2,", "epohcs: 2,") + "  method: toy\n", "base.schedule.epohcs: unknown key (did you mean 'epochs'?)"),
        (BASE.replace("epochs: 2,", "epochs: two,") + "  method: toy\n", "base.schedule.epochs: expected an integer, got str 'two'"),
        (BASE.replace("epochs: 2,", "epochs: 0,") + "  method: toy\n", "base.schedule.epochs: must be >= 1, got 0"),
        (BASE.replace("warmup_epochs: 0,", "warmup_epochs: 2,") + "  method: toy\n", "base.schedule.warmup_epochs: must be < epochs (2), got 2"),
        (BASE + "  method: toy\n  threat: {epsilon: -0.1}\n", "base.threat.epsilon: must be > 0"),
        (BASE + "  method: toy\n  eval: {attacks: [pgd20, pgd200]}\n", "base.eval.attacks[1]: must be one of clean, fgsm, pgd20, cw, aa"),
        (BASE + "  method: toy\n  seed: true\n", "base.seed: expected an integer, got bool True"),
        (BASE + "grid:\n  method: [toy]\n  toy.gamma: [0.5, 1.5]\n", "grid.toy.gamma[1]: must be <= 1, got 1.5"),
        (BASE + "grid:\n  method: [toy]\n  toy.gama: [0.5]\n", "grid.toy.gama[0]: unknown key (did you mean 'gamma'?)"),
        (BASE + "  method: toy\nmethods:\n  toy: {mode: paperr}\n", "methods.toy.mode: must be one of paper, code, got 'paperr' (did you mean 'paper'?)"),
        (BASE + "  method: toy\nmethods:\n  tyo: {}\n", "methods.tyo: unknown method (did you mean 'toy'?)"),
        (BASE + "grid:\n  method: toy\n", "grid.method: expected a non-empty list of values"),
        (BASE + "grid:\n  methd: [toy]\n", "grid.methd: unknown key 'methd' (did you mean 'method'?)"),
        (BASE + "  method: toy\ngird: {}\n", "gird: unknown top-level key (did you mean 'grid'?)"),
        (BASE + "  method: toy\nexclude:\n  - {student: resnet99}\n", "exclude[0].student: unknown model 'resnet99'"),
        (BASE + "  method: toy\nname: ../escape\n", "name: must be letters, digits"),
        ("base:\n  method: toy\n", "base: 'dataset' is required"),
        (BASE + "  method: toy\n  threat: {epsilon: 0.01, step_size: 0.1}\n", "base.threat.step_size: must be <= epsilon"),
        ("base: [1, 2]\n", "base: expected a mapping"),
        ("- just\n- a list\n", "the top level must be a mapping"),
        (BASE + "  method: toy\nreport: [table, per-clas]\n", "report[1]: unknown output 'per-clas' (did you mean 'per-class'?)"),
        (BASE + "  method: toy\nreport: table\n", "report: expected a list of outputs"),
    ],
)
def test_bad_input_names_file_and_key(tmp_path, text, expected):
    message = error_of(tmp_path, text)
    assert expected in message
    assert message.startswith(str(tmp_path / "exp.yaml")) or expected.startswith("exp.yaml")


def test_yaml_syntax_error_has_line_number(tmp_path):
    message = error_of(tmp_path, "base:\n  method: toy\n  student: [resnet8\n  seed: 1\n")
    assert "exp.yaml: line 4" in message or "exp.yaml: line 3" in message
    assert "YAML syntax error" in message


def test_missing_file_and_missing_include(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: file not found"):
        load_experiment(tmp_path / "nope.yaml")
    message = error_of(tmp_path, "include: missing.yaml\n" + BASE)
    assert "missing.yaml: file not found" in message


def test_include_cycle(tmp_path):
    write(tmp_path, "a.yaml", "include: b.yaml\n")
    write(tmp_path, "b.yaml", "include: a.yaml\n")
    with pytest.raises(ConfigError, match=r"include cycle \(a.yaml -> b.yaml -> a.yaml\)"):
        load_experiment(tmp_path / "a.yaml")


def test_error_in_included_file_names_that_file(tmp_path):
    write(tmp_path, "common.yaml", BASE.replace("epochs: 2,", "epochs: -1,"))
    message = error_of(tmp_path, "include: common.yaml\nbase: {method: toy}\n")
    assert message.startswith(str(tmp_path / "common.yaml") + ": base.schedule.epochs: must be >= 1")


def test_everything_excluded_is_an_error(tmp_path):
    message = error_of(tmp_path, BASE + "  method: toy\nexclude:\n  - {method: toy}\n")
    assert "every cell of the grid is excluded" in message


def test_switches_added_later_enter_the_key_only_when_set(tmp_path):
    """A ``key_at_default=False`` switch at its default leaves stored run keys as they were."""
    from dataclasses import dataclass

    from harness.schema import param, to_plain

    @dataclass(frozen=True)
    class Params:
        old: int = param(1)
        new: str = param("paper", key_at_default=False)

    assert to_plain(Params(), for_key=True) == {"old": 1}
    assert to_plain(Params(new="code"), for_key=True) == {"old": 1, "new": "code"}
    assert to_plain(Params()) == {"old": 1, "new": "paper"}  # config.json still records every value
    ferd = BASE + "  method: ferd\n"
    plain = load(tmp_path, ferd).cells[0]
    explicit = load(tmp_path, ferd + "methods: {ferd: {mask_variance: noisy}}\n", "b.yaml").cells[0]
    code = load(tmp_path, ferd + "methods: {ferd: {mask_variance: clean}}\n", "c.yaml").cells[0]
    assert "mask_variance" not in plain.identity()["params"]
    assert plain.key == explicit.key != code.key


@pytest.mark.parametrize("text, message", [
    ("base:\n  seed: 0\n  schedule: {epochs: 3}\n  seed: 1\n", "line 4: duplicate key 'seed' (first at line 2)"),
    ("grid: {seed: [0]}\nbase: {}\ngrid: {seed: [1]}\n", "line 3: duplicate key 'grid' (first at line 1)"),
    ("base:\n  schedule: {epochs: 3, warmup_epochs: 0, epochs: 4}\n",
     "line 2: duplicate key 'epochs' (first at line 2)"),
])
def test_a_repeated_mapping_key_is_refused_with_its_line(tmp_path, text, message):
    (tmp_path / "exp.yaml").write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_experiment(tmp_path / "exp.yaml")
    assert str(caught.value) == f"{tmp_path / 'exp.yaml'}: {message}"


def test_merge_keys_may_still_be_overridden():
    from harness.config import parse_yaml

    assert parse_yaml("a: &x {p: 1, q: 2}\nb:\n  <<: *x\n  p: 3\n") == {"a": {"p": 1, "q": 2}, "b": {"p": 3, "q": 2}}


def test_only_keeps_the_cells_matching_every_key(tmp_path):
    from harness.config import select_cells

    experiment = load(tmp_path, BASE + """
grid:
  method: [toy, toy-zero]
  seed: [0, 1, 2]
  toy.gamma: [0.1, 0.5]
""")
    cells = select_cells(experiment, ["seed=1,2", "method=toy"], "exp.yaml").cells
    assert sorted((c.method, c.settings.seed, c.params.gamma) for c in cells) == [
        ("toy", 1, 0.1), ("toy", 1, 0.5), ("toy", 2, 0.1), ("toy", 2, 0.5)]
    # method parameters by dotted key, numbers compared as numbers; the grid itself is untouched
    (cell,) = select_cells(experiment, ["toy.gamma=1/2", "seed=0", "method=toy"], "exp.yaml").cells
    assert (cell.settings.seed, cell.params.gamma) == (0, 0.5)
    assert len(experiment.cells) == 9  # toy: 3 seeds x 2 gammas; toy-zero: 3 seeds


@pytest.mark.parametrize("only, message", [
    (["sead=1"], "exp.yaml: --only sead: no cell has this key (did you mean 'seed'?)"),
    (["seed=1,7"], "exp.yaml: --only seed=7: no cell has this value (the grid's: 0, 1)"),
    (["method=tooy"], "exp.yaml: --only method=tooy: no cell has this value (the grid's: toy, toy-zero)"),
    (["seed"], "exp.yaml: --only 'seed': expected KEY=VALUE[,VALUE...]"),
    (["seed=1,"], "exp.yaml: --only 'seed=1,': expected KEY=VALUE[,VALUE...]"),
    (["seed=0", "seed=1"], "exp.yaml: --only seed given twice; list its values once (seed=A,B)"),
    (["method=toy-zero", "toy.gamma=0.5"], "exp.yaml: --only method=toy-zero toy.gamma=0.5: no cell of the grid "
                                           "matches all of them"),
])
def test_only_refuses_what_matches_nothing_in_one_line(tmp_path, only, message):
    from harness.config import select_cells

    experiment = load(tmp_path, BASE + "grid:\n  method: [toy, toy-zero]\n  seed: [0, 1]\n  toy.gamma: [0.1, 0.5]\n")
    with pytest.raises(ConfigError) as info:
        select_cells(experiment, only, "exp.yaml")
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
