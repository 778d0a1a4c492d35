"""Tables and figures from a fixture store with known numbers (``harness.report``, ``table``/``plot``)."""

import contextlib
import io
import json
import math
import os
import re
import subprocess

import matplotlib.colors
import matplotlib.pyplot as plt
import pandas as pd
import pytest
import seaborn as sns

from harness.cli import main
from harness.report.collect import open_store
from harness.report import methods as method_facts
from harness.report import plots
from harness.report.plots import KINDS, PlotOptions, _label_runs_per_point, plot
from harness.report.tables import build_table, choose_layout, render
from tests.report_fixture import metrics_of, sweep_store, write_run

@pytest.fixture
def main_store(tmp_path):
    """Two students; noise, cmi (seed 1 failed), ferd with two seeds (mean ± std)."""
    results = tmp_path / "results"
    for student in ("resnet8", "mobilenetv2"):
        bump = 0.0 if student == "resnet8" else 5.0
        write_run(results, "noise", 0, {"clean": (10.0, 0.0, 3.0), "pgd20": (10.0, 0.0, 3.0)}, student=student)
        write_run(results, "cmi", 0, {"clean": (70.0 + bump, 40.0, 0.30), "pgd20": (40.0, 10.0, 0.60)}, student=student)
        write_run(results, "cmi", 1, student=student, state="failed")
        write_run(results, "ferd", 0, {"clean": (60.0, 30.0, 0.40), "pgd20": (44.0, 20.0, 0.50)}, student=student)
        write_run(results, "ferd", 1, {"clean": (62.0, 34.0, 0.20), "pgd20": (46.0, 22.0, 0.70)}, student=student)
    return results


def cells_of(markdown: str, label: str) -> list[str]:
    """The cells of the Markdown row whose Method column is ``label`` (student resnet8)."""
    for line in markdown.splitlines():
        parts = [p.strip() for p in line.strip().strip("|").split("|")]
        if len(parts) > 2 and parts[0] == "resnet8" and parts[1] == label:
            return parts
    raise AssertionError(f"no row {label!r} in\n{markdown}")


def test_main_table_values_ranks_std_and_missing_marks_in_markdown(main_store):
    store = open_store("fix", main_store)
    assert choose_layout(store) == "main"
    table = build_table(store)
    assert [(a, m) for a, m in table.columns] == [(a, m) for a in ("clean", "pgd20") for m in ("avg", "worst", "nsd")]
    text = render(table, "md")
    header = next(line for line in text.splitlines() if line.startswith("| Student"))
    assert "Clean Avg ↑" in header and "PGD-20 NSD ↓" in header and "| n " in header
    noise, cmi, ferd = cells_of(text, "noise"), cells_of(text, "cmi †"), cells_of(text, "ferd")
    # columns: student, method, n, clean avg/worst/nsd, pgd20 avg/worst/nsd
    assert ferd[2] == "2" and cmi[2] == "1/2"
    assert ferd[3] == "<u>61.00 ± 1.41</u>"  # mean of 60, 62; sample std √2; second after cmi's 70
    assert cmi[3] == "**70.00**" and noise[3] == "10.00"
    assert cmi[4] == "**40.00**" and ferd[4] == "<u>32.00 ± 2.83</u>"
    # NSD: lower is better — ferd's 0.300 ± 0.141 ties cmi's 0.300 as displayed: both bold; noise last
    assert ferd[5] == "**0.300 ± 0.141**" and cmi[5] == "**0.300**" and noise[5] == "<u>3.000</u>"
    assert ferd[6] == "**45.00 ± 1.41**" and cmi[6] == "<u>40.00</u>"
    assert ferd[8] == "**0.600 ± 0.141**" and cmi[8] == "**0.600**"
    assert "† resnet8 / cmi: 1 of 2 runs finished (1 failed)" in text
    # ranks are per student block: mobilenetv2's cmi (75) is best in its own block too
    mobile = [line for line in text.splitlines() if line.startswith("| mobilenetv2") and "| cmi" in line][0]
    assert "**75.00**" in mobile


def test_main_table_in_latex_and_csv(main_store):
    table = build_table(open_store("fix", main_store))
    tex = render(table, "tex")
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    assert "\\multicolumn{3}{c}{Clean}" in tex and "NSD $\\downarrow$" in tex
    row = next(line for line in tex.splitlines() if line.startswith("resnet8 & ferd &"))
    assert "\\underline{61.00 $\\pm$ 1.41}" in row and "\\textbf{45.00 $\\pm$ 1.41}" in row
    assert "cmi $^\\dagger$" in tex and "1 of 2 runs finished (1 failed)" in tex
    csv = pd.read_csv(io.StringIO(render(table, "csv")))
    ferd = csv[(csv["Student"] == "resnet8") & (csv["Method"] == "ferd")].set_index(["attack", "metric"])
    assert ferd.loc[("clean", "avg"), "mean"] == 61 and ferd.loc[("clean", "avg"), "rank"] == 2
    assert ferd.loc[("clean", "avg"), "std"] == pytest.approx(math.sqrt(2), abs=1e-5)
    assert ferd.loc[("pgd20", "avg"), "rank"] == 1 and ferd.loc[("pgd20", "avg"), "n"] == 2
    cmi = csv[(csv["Student"] == "resnet8") & (csv["Method"] == "cmi")]
    assert set(cmi["runs_finished"]) == {1} and set(cmi["runs_expected"]) == {2}


def test_metric_choice_cost_columns_and_worst10_for_many_classes(main_store, tmp_path):
    table = build_table(open_store("fix", main_store), metric="worst", attacks=["pgd20"], cost=True)
    assert table.columns == [("pgd20", "worst")]
    text = render(table, "md")
    assert "PGD-20 Worst ↑" in text and "Avg" not in text and "Cost min" in text
    assert cells_of(text, "ferd")[-2:] == ["3.0", "1.5k"]  # mean of 2 and 4 minutes; 1,500 teacher images
    results = tmp_path / "many"
    folder = write_run(results, "cmi", 0, {"clean": (50.0, 0.0, 0.5)})
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["attacks"]["clean"]["per_class"] = [50.0] * 100
    (folder / "metrics.json").write_text(json.dumps(metrics))
    wide = build_table(open_store("fix", results))
    assert [m for _, m in wide.columns] == ["avg", "worst10", "nsd"] and "Worst-10%" in render(wide, "md")


def test_yaml_source_marks_cells_that_never_ran(tmp_path):
    (tmp_path / "exp.yaml").write_text("""
name: grid
base:
  dataset: synthetic
  student: resnet8
  teacher: {arch: cnn5, checkpoint: t.pt}
grid:
  method: [noise, toy]
  seed: [0, 1]
""")
    from harness.config import load_experiment

    experiment = load_experiment(tmp_path / "exp.yaml")
    results = tmp_path / "results"
    for spec in experiment.cells[:3]:  # noise 0, noise 1, toy 0 finished; toy 1 never ran
        folder = results / spec.relative_dir()
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps(spec.to_dict()))
        (folder / "status.json").write_text(json.dumps({"state": "done"}))
        (folder / "metrics.json").write_text(json.dumps(metrics_of({"clean": (50.0 + spec.settings.seed, 1, 0.5)})))
    text = render(build_table(open_store(tmp_path / "exp.yaml", results)), "md")
    assert cells_of(text, "toy †")[2:4] == ["1/2", "<u>50.00</u>"]
    assert "† resnet8 / toy: 1 of 2 runs finished (1 pending)" in text
    assert cells_of(text, "noise")[3] == "**50.50 ± 0.71**"


def test_ablation_reweighting_lambda_layer_and_gamma_layouts(tmp_path):
    results = tmp_path / "results"
    scores = {"clean": (60.0, 30.0, 0.3), "pgd20": (40.0, 10.0, 0.6)}
    for i, method in enumerate(("ferd", "ferd-no-reweight", "ferd-no-fae", "ferd-no-utae", "ferd-no-fae-utae")):
        write_run(results, method, 0, {"clean": (60.0 - i, 30.0, 0.3), "pgd20": (40.0 - i, 10.0 + i, 0.6)},
                  plugin="ferd", experiment="abl")
    ablation = build_table(open_store("abl", results))
    assert ablation.layout == "ablation" and ablation.columns == [(a, m) for a in ("clean", "pgd20")
                                                                  for m in ("avg", "worst")]
    text = render(ablation, "md")
    assert cells_of(text, "FERD")[2] == "**60.00**" and cells_of(text, "w/o FAEs & UTAEs")[5] == "**14.00**"
    assert cells_of(text, "w/o reweighting")[2] == "<u>59.00</u>"

    sweeps = {"rew": ("reweight", ["softmax", "power", "none"], "reweighting", "LPS power"),
              "lam": ("lambda_uni", [0.0, 5.0], "lambdas", "λ_uni"),
              "lay": ("layer", ["block3", "block4"], "layer", "block4"),
              "gam": ("gamma", [0.0, 0.5, 0.9], "gamma", "γ")}
    for experiment, (name, values, layout, shown) in sweeps.items():
        for i, value in enumerate(values):
            for seed in (0, 1):  # clean Avg 60.5 + i ± 0.71: the last value best, the one before second
                write_run(results, "ferd", seed, {"clean": (60.0 + i + seed, 30.0, 0.3), "pgd20": (40.0, 10.0, 0.6)},
                          params={name: value, "tau": 1.0}, experiment=experiment)
        write_run(results, "cmi", 0, scores, experiment=experiment)  # not part of a sweep table
        table = build_table(open_store(experiment, results))
        assert table.layout == layout and len(table.rows) == len(values)
        best, second = f"{60.5 + len(values) - 1:.2f} ± 0.71", f"{60.5 + len(values) - 2:.2f} ± 0.71"
        text = render(table, "md")
        assert shown in text and "cmi" not in text
        assert f"**{best}**" in text and f"<u>{second}</u>" in text
        tex = render(table, "tex").replace("$\\pm$", "±")
        assert f"\\textbf{{{best}}}" in tex and f"\\underline{{{second}}}" in tex
        csv = pd.read_csv(io.StringIO(render(table, "csv")))
        clean = csv[(csv["attack"] == "clean") & (csv["metric"] == "avg")]
        assert sorted(clean["mean"]) == [60.5 + i for i in range(len(values))]
        ranked = clean.sort_values("mean")  # rows may be in the store's reading order, not the fixture's
        assert list(ranked["rank"])[-2:] == [2, 1] and set(clean["n"]) == {2}
    gamma = render(build_table(open_store("gam", results)), "tex")
    assert "$\\gamma$" in gamma and "ferd & 0.9" in gamma


def test_dfkd_vs_dfrd_shows_the_change_in_parentheses(tmp_path):
    results = tmp_path / "results"
    for method, clean, robust in (("cmi", 80.0, 60.0), ("ferd", 78.0, 64.5)):
        write_run(results, method, 0, {"clean": (clean, 50.0, 0.2), "pgd20": (2.0, 0.0, 1.5)}, adversarial=False)
        write_run(results, method, 0, {"clean": (robust, 30.0, 0.4), "pgd20": (40.0, 12.0, 0.5)})
    table = build_table(open_store("fix", results))
    assert table.layout == "dfkd-vs-dfrd"
    assert [row.labels[-2:] for row in table.rows] == [("cmi", "DFKD"), ("cmi", "DFRD"),
                                                       ("ferd", "DFKD"), ("ferd", "DFRD")]
    text = render(table, "md")
    dfrd = next(line for line in text.splitlines() if "| ferd" in line and "DFRD" in line)
    assert "64.50 (-13.50)" in dfrd and "40.00 (+38.00)" in dfrd
    assert "**64.50 (-13.50)**" in dfrd  # ranked among the DFRD rows only


def test_plot_kinds_render_pngs_from_the_fixture_store(tmp_path):
    store = open_store("fixture", sweep_store(tmp_path / "results"))
    options = PlotOptions(tmp_path / "out", formats=("png",))
    for kind in KINDS:
        paths = plot(kind, store, options)
        assert paths, kind
        for path in paths:
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000, path
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        ["per-class.png", "confusion-clean.png", "confusion-pgd20.png", "weights.png", "gamma.png", "epochs.png",
         "samples.png"])


def test_weights_plot_draws_finished_runs_one_panel_per_student(tmp_path, monkeypatch):
    """A cell still running (one epoch logged) must not cut the seed-mean lines short."""
    results = tmp_path / "results"
    history = [{"epoch": e, "class_weights": [0.2, 0.3, 0.5]} for e in (1, 2, 3)]
    scores = {"clean": (60.0, 30.0, 0.3), "pgd20": (40.0, 10.0, 0.6)}
    for student in ("resnet8", "mobilenetv2"):
        write_run(results, "ferd", 0, scores, student=student, history=history)
    write_run(results, "ferd", 1, student="resnet8", state="running", history=history[:1])
    figures = []
    monkeypatch.setattr(plots, "_save", lambda figure, options, stem: figures.append(figure) or [stem])
    plot("weights", open_store("fix", results), PlotOptions(tmp_path / "out", formats=("png",)))
    axes = figures[0].axes
    assert sorted(axis.get_title() for axis in axes) == ["ferd · mobilenetv2: class weights p",
                                                         "ferd · resnet8: class weights p"]
    for axis in axes:
        per_class = [line for line in axis.get_lines() if line.get_linestyle() == "-"]
        assert len(per_class) == 3 and all(list(line.get_xdata()) == [1, 2, 3] for line in per_class)
    plt.close(figures[0])


def test_weights_plot_reads_what_the_weights_are_from_the_method_and_equal_weight_from_the_log(tmp_path, monkeypatch):
    """Fair-ARD declares loss weights ω (drawn against 1), FERD sampling weights p (against 1/C); a run
    whose logged weights never left uniform (FERD w/o reweighting, ARD) is an equal-weight run, whatever
    its name, and only meets the reweighted ones in the comparison row."""
    results = tmp_path / "results"
    scores = {"clean": (60.0, 30.0, 0.3), "pgd20": (40.0, 10.0, 0.6)}
    logs = {"ferd": [0.2, 0.3, 0.5], "my-ferd": [1 / 3] * 3, "fair-ard": [0.9, 0.9, 1.2], "ard": [1.0] * 3}
    for method, weights in logs.items():
        history = [{"epoch": e, "class_weights": weights} for e in (1, 2, 3)]
        write_run(results, method, 0, scores, plugin="fair-ard" if "ard" in method else "ferd", history=history)
    write_run(results, "cmi", 0, scores)
    panels = _panels_by_title("weights", results, tmp_path, monkeypatch)
    assert set(panels) == {"ferd: class weights p", "fair-ard: class loss weights ω", "equal vs reweighted: PGD-20"}
    dashed = {title: [line.get_ydata()[0] for line in axis.get_lines() if line.get_linestyle() == "--"]
              for title, axis in panels.items()}
    assert dashed["ferd: class weights p"] == [pytest.approx(1 / 3)] and dashed["fair-ard: class loss weights ω"] == [1.0]
    legend = [text.get_text() for text in panels["equal vs reweighted: PGD-20"].get_legend().get_texts()]
    assert sorted(legend) == ["ard", "fair-ard", "ferd", "my-ferd"]  # no cmi: it logs no weights
    plt.close("all")


def test_per_class_and_confusion_never_pool_two_students(main_store, tmp_path, monkeypatch):
    figures = {}
    monkeypatch.setattr(plots, "_save", lambda figure, options, stem: figures.update({stem: figure}) or [stem])
    store, options = open_store("fix", main_store), PlotOptions(tmp_path / "out", formats=("png",))
    plot("per-class", store, options)
    plot("confusion", store, options)
    panels = {axis.get_title(): axis for axis in figures["per-class"].axes}
    assert set(panels) == {f"{a} · {s}" for a in ("Clean", "PGD-20") for s in ("resnet8", "mobilenetv2")}
    for student, clean_avg in (("resnet8", 70.0), ("mobilenetv2", 75.0)):  # cmi: per class (40, avg, 100)
        bars = [[round(bar.get_height(), 6) for bar in hue] for hue in panels[f"Clean · {student}"].containers]
        assert [40.0, clean_avg, 100.0] in bars and [40.0, 72.5, 100.0] not in bars  # not their mean
    titles = {axis.get_title() for axis in figures["confusion-clean"].axes if axis.get_visible()}
    assert {"cmi · resnet8", "cmi · mobilenetv2", "ferd · resnet8", "noise · mobilenetv2"} <= titles
    for figure in figures.values():
        plt.close(figure)


def _panels_by_title(kind: str, results, tmp_path, monkeypatch) -> dict:
    """The axes of the ``kind`` figure drawn from ``results``, by title (nothing written)."""
    figures = []
    monkeypatch.setattr(plots, "_save", lambda figure, options, stem: figures.append(figure) or [stem])
    plot(kind, open_store("fix", results), PlotOptions(tmp_path / "out", formats=("png",)))
    return {axis.get_title(): axis for axis in figures[0].axes}


def test_epochs_plot_has_a_row_per_student_and_no_band_below_zero(tmp_path, monkeypatch):
    results = tmp_path / "results"
    scores = {"clean": (60.0, 30.0, 0.3), "pgd20": (40.0, 10.0, 0.6)}
    for student, offset in (("resnet8", 0.0), ("mobilenetv2", 30.0)):
        for seed, worst in ((0, 0.0), (1, 8.0)):  # mean 4, sd 5.7: the band would reach -1.7
            history = [{"epoch": e, "probe_clean": 40.0 + offset + e, "probe_pgd20": 20.0 + e,
                        "probe_clean_worst": 10.0, "probe_pgd20_worst": worst} for e in (1, 2, 3)]
            write_run(results, "cmi", seed, scores, student=student, history=history)
    panels = _panels_by_title("epochs", results, tmp_path, monkeypatch)
    assert set(panels) == {f"{m} (held-out probe) · {s}" for m in ("Avg", "Worst") for s in ("resnet8", "mobilenetv2")}
    for student, clean_at_1 in (("resnet8", 41.0), ("mobilenetv2", 71.0)):
        lines = [list(line.get_ydata()) for line in panels[f"Avg (held-out probe) · {student}"].get_lines()]
        assert [clean_at_1, clean_at_1 + 1, clean_at_1 + 2] in lines  # its own runs, not the two students' mean
    assert all(axis.get_ylim()[0] == 0 for axis in panels.values())
    plt.close("all")


def test_gamma_plot_has_a_row_per_student(tmp_path, monkeypatch):
    results = tmp_path / "results"
    for student, pgd_avg in (("resnet8", 30.0), ("mobilenetv2", 50.0)):
        for gamma in (0.0, 0.5):
            write_run(results, "ferd", 0, {"clean": (60.0, 30.0, 0.3), "pgd20": (pgd_avg + gamma, 10.0, 0.6)},
                      student=student, params={"gamma": gamma})
    panels = _panels_by_title("gamma", results, tmp_path, monkeypatch)
    assert set(panels) == {f"{m} · {s}" for m in ("Avg", "Worst") for s in ("resnet8", "mobilenetv2")}
    for student, pgd_avg in (("resnet8", 30.0), ("mobilenetv2", 50.0)):
        lines = [list(line.get_ydata()) for line in panels[f"Avg · {student}"].get_lines()]
        assert [pgd_avg, pgd_avg + 0.5] in lines  # its own runs, not the two students' mean
    plt.close("all")


def test_sweep_plot_gives_each_method_its_family_colour(tmp_path, monkeypatch):
    """A line spans the swept values, so its colour is keyed by the label without the swept axis
    (keyed by the full label, every line fell back to the teacher's black)."""
    results = tmp_path / "results"
    for method, pgd_avg in (("cmi", 30.0), ("ferd", 40.0)):
        for gamma in (0.0, 0.5):
            write_run(results, method, 0, {"clean": (60.0, 30.0, 0.3), "pgd20": (pgd_avg + gamma, 10.0, 0.6)},
                      params={"gamma": gamma})
    panel = _panels_by_title("gamma", results, tmp_path, monkeypatch)["Avg"]
    colours = {tuple(line.get_ydata()): matplotlib.colors.to_hex(line.get_color()) for line in panel.get_lines()}
    cmi, ferd = colours[(30.0, 30.5)], colours[(40.0, 40.5)]
    assert cmi != ferd and plots.TEACHER_COLOR not in (cmi, ferd)
    assert {cmi, ferd} == {matplotlib.colors.to_hex(method_facts.family_color(m)) for m in ("cmi", "ferd")}
    plt.close("all")


def test_gamma_plot_tick_labels_give_the_runs_behind_each_value():
    """A swept value with one finished seed must not read like a mean of three."""
    rows = [(0.0, "ferd", 0), (0.0, "ferd", 1), (0.5, "ferd", 0), (0.0, "ferd (tau=2)", 0), (0.5, "ferd (tau=2)", 0)]
    panel = pd.DataFrame([{"x": x, "method": method, "attack": "Clean", "accuracy": 50.0 + seed}
                          for x, method, seed in rows])
    for x_values, expected in ((panel["x"], ["0\nn=1–2", "0.5\nn=1"]),
                               (panel["x"].map({0.0: "softmax", 0.5: "power"}), ["softmax\nn=1–2", "power\nn=1"])):
        figure, axis = plt.subplots()
        data = panel.assign(x=x_values)
        sns.lineplot(data, x="x", y="accuracy", hue="method", ax=axis)
        _label_runs_per_point(axis, data)
        assert [label.get_text() for label in axis.get_xticklabels()] == expected
        plt.close(figure)


def harness(*args, cwd):
    """``python -m harness ARGS`` in ``cwd``, in this process (the CLI's own entry point and exit codes)."""
    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in args])
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def test_table_and_plot_commands(main_store, tmp_path):
    done = harness("table", "--format", "tex", "--out", "t.tex", cwd=tmp_path)  # the store's only experiment
    assert done.returncode == 0 and "\\textbf{" in (tmp_path / "t.tex").read_text()
    shown = harness("table", "fix", "--metric", "nsd", cwd=tmp_path)
    assert shown.returncode == 0 and re.search(r"Clean NSD ↓ \| +PGD-20 NSD ↓", shown.stdout)
    for bad, message in ((("table", "nope"), "nope: no experiment file of that name"),
                         (("table", "fix", "--out", "t.xlsx"), "--out: cannot tell the format"),
                         (("table", "fix", "--attacks", "pgd50"), "--attacks: unknown attack 'pgd50'"),
                         (("table", "fix", "--layout", "gamma"), "layout 'gamma' needs runs that vary params.gamma"),
                         (("plot", "weights", "fix"), "no finished run logged class weights"),
                         (("table", "../etc"), "not an experiment file or name")):
        result = harness(*bad, cwd=tmp_path)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.splitlines()) == 1, result.stderr
    drawn = harness("plot", "per-class", "fix", "--formats", "png", cwd=tmp_path)
    assert drawn.returncode == 0 and (tmp_path / "reports" / "fix" / "per-class.png").exists()


def test_report_outputs_match_the_figure_kinds():
    from harness.config import REPORT_OUTPUTS

    assert set(REPORT_OUTPUTS) == {"table", *KINDS}


def test_run_writes_the_experiments_report_when_every_cell_is_done(tmp_path, teacher_checkpoint, monkeypatch):
    from tests.e2e import run_experiment, write_experiment

    write_experiment(tmp_path, f"""
name: demo
base:
  dataset: synthetic
  student: resnet8
  teacher: {{arch: cnn5, checkpoint: {teacher_checkpoint}}}
  schedule: {{epochs: 1, warmup_epochs: 0, generator_steps: 1, student_steps: 1, batch_size: 8, probe_n: 20}}
  threat: {{train_steps: 1}}
  eval: {{attacks: [clean, fgsm], n_eval: 20}}
grid:
  method: [noise, ard]
report: [table, per-class, confusion]
""")
    out = run_experiment(tmp_path, args=("--workers", "2"))
    reports = tmp_path / "reports" / "demo"
    expected = ["table.md", "table.csv", "per-class.png", "confusion-clean.png", "confusion-fgsm.png"]
    assert sorted(p.name for p in reports.iterdir()) == sorted(expected)
    assert all(f"wrote reports/demo/{name}" in out for name in expected)
    table = (reports / "table.md").read_text()
    assert "| noise" in table and "| ard" in table and "FGSM" in table

    # a file that names the experiment of a file beside it is a view of that store: its reports are
    # prefixed with its own stem, so that the two write side by side
    import shutil

    from harness.cli import main

    shutil.copy(tmp_path / "exp.yaml", tmp_path / "demo.yaml")
    (tmp_path / "demo_noise.yaml").write_text("include: demo.yaml\nname: demo\ngrid:\n  method: [noise]\n"
                                             "report: [table, weights, per-class]\n")
    monkeypatch.chdir(tmp_path)
    with contextlib.redirect_stderr(io.StringIO()) as err:  # noise logs no class weights: that figure is skipped
        assert main(["run", "demo_noise.yaml", "--quiet", "--device", "cpu"]) == 0
    assert "report: weights not drawn: demo: no finished run logged class weights" in err.getvalue()
    assert sorted(p.name for p in reports.iterdir()) == sorted(
        [*expected, "demo_noise-table.md", "demo_noise-table.csv", "demo_noise-per-class.png"])
    view = (reports / "demo_noise-table.md").read_text()
    assert "| noise" in view and "| ard" not in view
    assert main(["plot", "confusion", "demo_noise.yaml", "--formats", "png"]) == 0
    assert (reports / "demo_noise-confusion-clean.png").is_file()


def test_precision_labels_a_variant_with_its_default_filled_in():
    """config.json leaves out ``precision: fp32`` (not in the run key at its default): the rows still split."""
    from harness.report.collect import run_axes, varying_axes

    base = {"method": "cmi", "teacher": {"arch": "cnn5"}, "schedule": {"epochs": 1}, "threat": {}, "eval": {},
            "params": {"nz": 256}}
    configs = [base, {**base, "precision": "bf16"}]
    settings, params = varying_axes(configs)
    assert settings == ["precision"] and params == {"cmi": []}
    assert [axes["precision"] for axes in run_axes(configs)] == ["fp32", "bf16"]


def test_a_methods_own_schedule_defaults_are_not_a_variant():
    """DFHL brings its own learning-rate schedule: rows stay 'dfhl' and 'cmi'; epochs varying within
    each method still labels the rows."""
    from harness.report.collect import run_axes

    cmi = {"method": "cmi", "teacher": {"arch": "cnn5"}, "schedule": {"epochs": 10, "lr_min": 0.0},
           "threat": {}, "eval": {}, "params": {}}
    dfhl = {**cmi, "method": "dfhl", "schedule": {"epochs": 10, "lr_min": 0.0002}}
    assert run_axes([cmi, dfhl]) == [{}, {}]
    longer = [{**c, "schedule": {**c["schedule"], "epochs": 20}} for c in (cmi, dfhl)]
    assert run_axes([cmi, dfhl, *longer]) == [{"schedule.epochs": e} for e in (10, 10, 20, 20)]


def test_a_plugin_from_harness_plugins_gets_its_own_colour_order_and_ablation_view(tmp_path):
    """tests/toy_method.py is loaded through HARNESS_PLUGINS (tests/conftest.py) and declares its
    family colour, its order and an ablation preset: the reports show it without knowing it."""
    from matplotlib.colors import to_hex

    results = tmp_path / "results"
    write_run(results, "toy", 0, {"clean": (50.0, 20.0, 0.4), "pgd20": (30.0, 10.0, 0.5)}, experiment="toys")
    write_run(results, "toy-zero", 0, {"clean": (45.0, 15.0, 0.4), "pgd20": (25.0, 5.0, 0.5)}, plugin="toy",
              params={"gamma": 0.0}, experiment="toys")
    write_run(results, "cmi", 0, {"clean": (70.0, 40.0, 0.3), "pgd20": (40.0, 10.0, 0.6)}, experiment="toys")
    store = open_store("toys", results)
    assert choose_layout(store) == "ablation"
    text = render(build_table(store), "md")
    assert "Toy w/o γ" in text and "| Toy " in text
    main_rows = [line.split("|")[2].strip() for line in render(build_table(store, "main"), "md").splitlines()
                 if line.startswith("| resnet8")]
    assert main_rows[:2] == ["toy", "toy-zero"] and main_rows[-1] == "cmi"  # order 5 before CMI's 30
    colors = plots.palette(store)
    assert to_hex(colors["toy"]) == "#123456"
    out = tmp_path / "figures"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["plot", "per-class", "toys", "--results", str(results), "--out", str(out),
                     "--formats", "png"]) == 0
    assert (out / "per-class.png").stat().st_size > 0
