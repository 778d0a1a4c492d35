"""Device correctness without a GPU: every method trains, resumes and evaluates on ``meta``.

PyTorch's ``meta`` device holds no data; like CUDA it refuses ``torch.cat`` with CPU tensors
and ``.numpy()``, and under :class:`StrictRandomDraws` any random draw onto it — or from a
generator on another device — raises. A cell trained one epoch on the CPU is resumed on meta
(the checkpoint is read to the CPU and placed), trains its second epoch there, is probed and
evaluated there and writes its gallery; a second cell runs from scratch on meta, warm-up epoch
included. Evaluation does not depend on the method (and on meta every op runs through Python
decompositions, slowly): the per-method cells are evaluated clean and probed with PGD-20 in one batch,
and one cell is evaluated under every attack on meta, in three batches.
"""

import json

import pytest
import torch

from harness import trainer as trainer_module
from harness.backbone.devices import RandomDrawOnDevice, StrictRandomDraws, randn, to_host
from harness.trainer import Trainer, train_cell
from harness.config import load_experiment
from harness.evaluate import evaluate
from harness.models import create_model

# loading a CPU checkpoint into meta modules copies nothing (meta has no data); torch warns each time
pytestmark = pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")

METHODS = ["noise", "zskt", "deepinv", "cmi", "fast", "dfhl", "ferd", "ferd-code", "ferd-no-fae", "fair-ard", "rslad"]

EXPERIMENT = """
base:
  dataset: synthetic
  student: resnet8
  teacher: {{arch: cnn5, checkpoint: {teacher}}}
  schedule: {{epochs: 2, warmup_epochs: {warmup}, generator_steps: 2, student_steps: 2, batch_size: 8,
              pool_size: 12, history_every: 2, probe_n: 20}}
  threat: {{train_steps: 2}}
  eval: {{attacks: {attacks}, n_eval: 20, batch_size: {eval_batch}}}
methods:
  zskt: {{n_g: 1}}
grid:
  method: {methods}
"""


def cells(tmp_path, teacher, warmup, attacks=("clean",), eval_batch=20):
    """The cells of EXPERIMENT; ``eval_batch`` below ``n_eval`` (20) evaluates in several batches."""
    (tmp_path / "exp.yaml").write_text(EXPERIMENT.format(teacher=teacher, warmup=warmup, methods=METHODS,
                                                         attacks=list(attacks), eval_batch=eval_batch))
    return {spec.method: spec for spec in load_experiment(tmp_path / "exp.yaml").cells}


class _StopAfterFirstCheckpoint(Exception):
    pass


def _train_one_epoch_on_cpu(spec, run_dir):
    trainer = Trainer(spec, run_dir, "cpu", progress=False)
    save = trainer.save

    def save_then_stop():
        save()
        raise _StopAfterFirstCheckpoint

    trainer.save = save_then_stop
    with pytest.raises(_StopAfterFirstCheckpoint):
        trainer.train()


@pytest.fixture(scope="module")
def specs_no_warmup(tmp_path_factory, teacher_checkpoint):
    return cells(tmp_path_factory.mktemp("device"), teacher_checkpoint, warmup=0)


@pytest.mark.parametrize("method", METHODS)
def test_a_cell_resumed_on_another_device_trains_and_evaluates_there(tmp_path, specs_no_warmup, method):
    spec = specs_no_warmup[method]
    _train_one_epoch_on_cpu(spec, tmp_path)
    with StrictRandomDraws():
        metrics = train_cell(spec, tmp_path, "meta", progress=False)
    assert set(metrics["attacks"]) == {"clean"}
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in history] == [1, 2] and "probe_pgd20" in history[1]  # probed on meta
    assert (tmp_path / "synthetic.npz").exists() and (tmp_path / "student.pt").exists()


@pytest.mark.parametrize("method", ["cmi", "ferd", "dfhl"])
def test_a_cell_runs_from_scratch_on_another_device(tmp_path, teacher_checkpoint, method):
    spec = cells(tmp_path, teacher_checkpoint, warmup=1)[method]
    with StrictRandomDraws():
        train_cell(spec, tmp_path, "meta", progress=False)
    state = torch.load(tmp_path / trainer_module.CHECKPOINT, map_location="cpu", weights_only=True)
    assert state["epoch"] == 2


def test_a_final_checkpoint_resumes_into_evaluation_on_another_device(tmp_path, teacher_checkpoint):
    """A cell killed during its final evaluation: the last checkpoint is read and evaluated on the
    device under every attack of the final evaluation but AutoAttack."""
    spec = cells(tmp_path, teacher_checkpoint, warmup=0, attacks=("clean", "fgsm", "pgd20", "cw"), eval_batch=8)["ferd"]
    run_dir = tmp_path / "run"
    trainer = Trainer(spec, run_dir, "cpu", progress=False)
    trainer.train()
    with StrictRandomDraws():
        metrics = train_cell(spec, run_dir, "meta", progress=False)
    assert metrics["n_eval"] == 20 and set(metrics["attacks"]) == {"clean", "fgsm", "pgd20", "cw"}


def test_evaluation_draws_its_random_starts_on_the_cpu(tmp_path):
    """PGD and CW starts come from a CPU generator: the same seed gives the same starts on any device."""
    model = create_model("resnet8", in_channels=3, num_classes=10, image_size=16).to("meta")
    data = torch.utils.data.TensorDataset(torch.rand(10, 3, 16, 16), torch.arange(10))
    data.targets = torch.arange(10)
    with StrictRandomDraws():
        result = evaluate(model, data, ["clean", "pgd20", "cw"], epsilon=8 / 255, step_size=2 / 255,
                          num_classes=10, device="meta", progress=False)
    assert len(result.predictions["pgd20"]) == 10


def test_the_guard_rejects_draws_onto_a_device_and_mismatched_generators():
    with StrictRandomDraws():
        with pytest.raises(RandomDrawOnDevice, match="generator on cpu drawing onto meta"):
            torch.randn(3, generator=torch.Generator(), device="meta")
        with pytest.raises(RandomDrawOnDevice, match="randn: random draw onto meta"):
            torch.randn(3, device="meta")
        with pytest.raises(RandomDrawOnDevice, match="randn_like"):
            torch.randn_like(torch.empty(3, device="meta"))
        with pytest.raises(RandomDrawOnDevice, match="normal_"):
            torch.nn.init.normal_(torch.empty(3, device="meta"))
        torch.randn(3, generator=torch.Generator())  # on the CPU: allowed
        assert randn(3, device="meta").device.type == "meta"  # drawn on the CPU, then moved


def test_helpers_draw_the_same_values_whatever_the_device():
    on_cpu = randn((4, 2), generator=torch.Generator().manual_seed(3))
    moved = randn((4, 2), generator=torch.Generator().manual_seed(3), device="meta")
    assert moved.device.type == "meta" and torch.equal(on_cpu, torch.randn(4, 2, generator=torch.Generator().manual_seed(3)))
    assert torch.equal(to_host(moved), torch.zeros(4, 2))  # meta carries no values: zeros of its shape


def test_gpu_smoke_tiny_passes_on_the_cpu(tmp_path):
    """``benchmarks/gpu_smoke.py --tiny``: the CPU version of the first run on a GPU machine."""
    import subprocess
    import sys

    from tests.e2e import ROOT

    out = tmp_path / "smoke.json"
    process = subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu_smoke.py"), "--tiny", "--out", str(out)],
                             capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr[-2000:]
    report = json.loads(out.read_text())
    assert all(run["ok"] for run in report["methods"].values()) and len(report["methods"]) == 18
    assert report["resume"] == {"stopped_after_epoch": 1, "epochs": [1, 2], "history_equal": True}
    assert set(report["evaluation"]["avg"]) == {"clean", "fgsm", "pgd20", "cw", "aa"}
    assert report["timings"]["ferd/fp32"]["tflop"] > 0 and "cudnn" in report
