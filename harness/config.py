"""Experiment files: YAML -> validated run specs (one per grid cell) with a stable run key.

An experiment file has these top-level keys (all optional but ``base``/``grid`` must
together name a method, dataset, student and teacher)::

    name: cifar10_main          # default: the file's stem
    include: [common.yaml]      # files merged underneath this one (paths relative to it)
    base: {dataset: ..., student: ..., teacher: {arch: ..., checkpoint: ...},
           seed: 0, schedule: {...}, threat: {...}, eval: {...}}
    methods: {ferd: {gamma: 0.5}}          # per-method hyper-parameters
    grid: {method: [...], seed: [0, 1, 2], ferd.gamma: [0.1, 0.5]}
    exclude: [{method: zskt, student: mobilenetv2}]
    executor: {kind: slurm, slurm: {partition: gpu, time: 1440}}   # how `run` runs the grid

``grid`` lists expand to their cartesian product (duplicates collapse), ``exclude``
removes matching cells. Mappings merge deeply over included files, except ``base.teacher``,
which a file sets whole (its two forms, ``arch`` and ``robustbench``, exclude each other);
lists replace.
Every cell is validated before anything runs; errors are :class:`ConfigError`, one
line naming the file and the key path.
"""

from __future__ import annotations

import copy
import hashlib
import math
import itertools
import json
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from harness.backbone.method import METHODS, MethodEntry, load_plugins
from harness.data import get_dataset
from harness.errors import HarnessError
from harness.models import MODELS
from harness.registry import RegistryError, suggest
from harness.attacks import ATTACK_NAMES
from harness.report.names import PLOT_KINDS
from harness.schema import SchemaError, as_float, build, param, to_plain

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
TOP_LEVEL_KEYS = ("name", "description", "include", "base", "methods", "grid", "exclude", "executor", "report")
# What ``report:`` may ask ``run`` to write once every cell is done: the table, and figure kinds
# (the kinds of harness.report.names, which imports no plotting library).
REPORT_OUTPUTS = ("table", *PLOT_KINDS)


class ConfigError(HarnessError):
    """An invalid experiment file; the message is ``FILE: KEY.PATH: problem``."""


# --------------------------------------------------------------------------- the schema
@dataclass(frozen=True)
class Normalize:
    """Per-channel input statistics a checkpoint was trained with: the teacher sees (x − mean) / std."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError("mean: mean and std need one value per channel each")
        if min(self.std) <= 0:
            raise ValueError("std: every std must be > 0")


@dataclass(frozen=True)
class ExpectedAccuracy:
    """Published accuracies (%) of a teacher, which ``harness teacher check`` compares with its own."""

    clean: float | None = param(None, ge=0, le=100)
    pgd20: float | None = param(None, ge=0, le=100)
    autoattack: float | None = param(None, ge=0, le=100)


@dataclass(frozen=True)
class TeacherSpec:
    """The robust teacher, in one of two forms (docs/architecture.md, "Teachers"):

    - ``arch`` (a harness architecture) with its ``checkpoint`` (None = untrained, tests only) and the
      input ``normalize`` statistics it was trained with (none: raw [0, 1] images);
    - ``robustbench``: a RobustBench model-zoo name, loaded through the ``robustbench`` package from
      ``<model_dir>/<zoo_dataset>/<threat>/<name>.pt`` (the architecture is RobustBench's).

    ``model_dir`` is a path and ``expected`` only informs ``teacher check``: neither enters the run key.
    """

    arch: str | None = None
    checkpoint: str | None = None
    sha256: str | None = param(None, doc="expected SHA-256 of the checkpoint; enters the run key")
    normalize: Normalize | None = param(None, key_at_default=False,
                                        doc="input mean/std of the checkpoint's training (default raw [0, 1])")
    robustbench: str | None = param(None, key_at_default=False, doc="RobustBench model-zoo name")
    threat: Literal["Linf", "L2", "corruptions"] = param("Linf", key_at_default=False,
                                                         doc="RobustBench threat model of the zoo entry")
    zoo_dataset: str | None = param(None, key_at_default=False,
                                    doc="RobustBench dataset of the zoo entry (default: the cell's dataset)")
    model_dir: str = param("teachers", doc="RobustBench model_dir; not part of the run key")
    expected: ExpectedAccuracy | None = param(None, doc="published accuracies for `teacher check`; "
                                                        "not part of the run key")

    def __post_init__(self) -> None:
        if (self.arch is None) == (self.robustbench is None):
            raise ValueError("arch: give either arch (with checkpoint) or robustbench, not both or neither")
        if self.robustbench is not None and self.checkpoint is not None:
            raise ValueError("checkpoint: a robustbench teacher's file is <model_dir>/<dataset>/<threat>/<name>.pt")
        if self.arch is not None and self.zoo_dataset is not None:
            raise ValueError("zoo_dataset: only for a robustbench teacher")

    @property
    def label(self) -> str:
        """How messages name the teacher: ``robustbench:NAME`` or ``ARCH (CHECKPOINT)``."""
        if self.robustbench is not None:
            return f"robustbench:{self.robustbench}"
        return f"{self.arch} ({self.checkpoint or 'untrained'})"


@dataclass(frozen=True)
class Schedule:
    """The distillation schedule shared by all methods (docs/methods.md)."""

    epochs: int = param(220, ge=1)
    warmup_epochs: int = param(20, ge=0, doc="generation-only epochs before student training")
    generator_steps: int = param(200, ge=0, doc="T_g: generator/image steps per epoch")
    student_steps: int = param(400, ge=1, doc="T_s: student steps per epoch")
    batch_size: int = param(256, ge=1)
    lr: float = param(0.1, gt=0)
    lr_min: float = param(0.0, ge=0, doc="floor of the cosine schedule (DFHL: 2e-4)")
    lr_schedule: Literal["student_steps", "epochs"] = param(
        "student_steps", key_at_default=False,
        doc="cosine over the student steps | stepped once per epoch over every epoch, warm-up included "
            "(FERD's released code)")
    kl_reduction: Literal["batchmean", "mean"] = param(
        "batchmean", key_at_default=False,
        doc="KL of the RSLAD student step: class sum, batch mean | mean over batch × classes (RSLAD's code)")
    synthesis_student_bn: Literal["running", "batch_first_epoch", "batch"] = param(
        "running", key_at_default=False,
        doc="the student's BatchNorm during synthesis: running statistics | the batch's in the first epoch "
            "| the batch's always (running statistics kept)")
    momentum: float = param(0.9, ge=0, lt=1)
    weight_decay: float = param(5e-4, ge=0)
    pool_size: int = param(50_000, ge=1, doc="most synthetic images kept in the pool")
    checkpoint_every: int = param(1, ge=1, doc="epochs between checkpoints")
    history_every: int = param(10, ge=1, doc="epochs between held-out accuracy probes")
    probe_n: int = param(500, ge=10, doc="stratified training-split images in each probe")
    adversarial: bool = param(True, doc="false: DFKD instead of DFRD, the student distils on the clean "
                                        "images and the method's adversarial step is skipped (Table 8)")

    def __post_init__(self) -> None:
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs: must be < epochs ({self.epochs}), got {self.warmup_epochs}")


@dataclass(frozen=True)
class ThreatModel:
    """L∞ budget of training and evaluation attacks; None means the dataset's default."""

    epsilon: float | None = param(None, gt=0, le=1)
    step_size: float | None = param(None, gt=0, le=1)
    train_steps: int = param(10, ge=1, doc="steps of the KL-PGD / UTAE attack in training")


@dataclass(frozen=True)
class EvalSpec:
    """Final evaluation of the student (docs/methods.md; the attacks of harness/attacks.py)."""

    attacks: tuple[str, ...] = param(ATTACK_NAMES, doc="names in harness.attacks.ATTACKS")
    aa_version: Literal["standard", "fast"] = "standard"
    n_eval: int | None = param(None, ge=1, doc="class-stratified test subset; None = full test set")
    aa_n_eval: int | None = param(None, ge=1, doc="smaller stratified subset for AutoAttack")
    batch_size: int = param(256, ge=1)

    def __post_init__(self) -> None:
        for index, name in enumerate(self.attacks):
            if name not in ATTACK_NAMES:
                raise ValueError(f"attacks[{index}]: must be one of {', '.join(ATTACK_NAMES)}, got {name!r}"
                                 f"{suggest(str(name), ATTACK_NAMES)}")


@dataclass(frozen=True)
class CellSettings:
    """Everything of a cell except the method's own hyper-parameters."""

    method: str
    dataset: str
    student: str
    teacher: TeacherSpec
    seed: int = param(0, ge=0)
    schedule: Schedule = Schedule()
    threat: ThreatModel = ThreatModel()
    eval: EvalSpec = EvalSpec()
    precision: Literal["fp32", "bf16"] = param(
        "fp32", key_at_default=False,
        doc="bf16: autocast of the generator, student and training-attack passes; evaluation is always fp32")
    compile: bool = param(False, key_at_default=False, doc="torch.compile the teacher and the student")
    data_root: str | None = param(None, doc="dataset folder; not part of the run key")


@dataclass(frozen=True)
class SlurmSettings:
    """Job-array parameters of the Slurm executor (``executor.slurm``)."""

    partition: str | None = param(None, doc="Slurm partition")
    account: str | None = param(None, doc="Slurm account")
    qos: str | None = param(None, doc="Slurm QOS")
    constraint: str | None = param(None, doc="Slurm node constraint")
    time: int = param(24 * 60, ge=1, doc="wall-clock limit per task, minutes")
    cpus_per_task: int = param(8, ge=1)
    mem_gb: int | None = param(None, ge=1, doc="memory per task; None = the partition's default")
    array_parallelism: int = param(64, ge=1, doc="most tasks of the array running at once")
    max_requeues: int = param(3, ge=0, doc="timeouts after which a task is requeued no more")
    folder: str = param("slurm", doc="submitit's logs and pickles, inside the results folder")
    cluster: Literal["slurm", "local", "debug"] = param("slurm", doc="local/debug: through submitit, on this machine")

    def __post_init__(self) -> None:
        if not SAFE_NAME.match(self.folder):
            raise ValueError(f"folder: must be letters, digits, '_', '-' or '.' inside the results folder "
                             f"(got {self.folder!r})")


@dataclass(frozen=True)
class ExecutorSettings:
    """How ``run`` executes the grid (``executor:``); command-line flags override it."""

    kind: Literal["local", "slurm"] = "local"
    gpus: tuple[int, ...] | None = param(None, doc="local: indices of the visible GPUs to use (default: all)")
    workers: int | None = param(None, ge=1, doc="local: CPU slots when no GPU is used; jobs per GPU otherwise")
    slurm: SlurmSettings = SlurmSettings()


CELL_KEYS = tuple(f.name for f in fields(CellSettings))
KEY_EXCLUDED = ("data_root",)
TEACHER_KEY_EXCLUDED = ("model_dir", "expected")


# --------------------------------------------------------------------------- run specs
@dataclass(frozen=True)
class RunSpec:
    """One fully resolved, validated grid cell."""

    experiment: str
    settings: CellSettings
    entry: MethodEntry
    params: Any

    @property
    def method(self) -> str:
        return self.entry.name

    def identity(self) -> dict[str, Any]:
        """Everything that can change the result (never paths, device or workers)."""
        settings = to_plain(self.settings, for_key=True)
        for key in KEY_EXCLUDED:
            settings.pop(key)
        checkpoint = self.settings.teacher.checkpoint
        settings["teacher"]["checkpoint"] = Path(checkpoint).name if checkpoint else None
        for path_or_note in TEACHER_KEY_EXCLUDED:
            settings["teacher"].pop(path_or_note)
        return {
            **settings,
            "plugin": self.entry.plugin_name,
            "version": self.entry.plugin.version,
            "params": to_plain(self.params, for_key=True),
        }

    @property
    def key(self) -> str:
        """A short stable hash of :meth:`identity`."""
        text = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    def relative_dir(self) -> Path:
        """``<experiment>/<dataset>/<method>/<student>/seed<k>-<key>`` inside the results folder."""
        s = self.settings
        return Path(self.experiment, s.dataset, self.method, s.student, f"seed{s.seed}-{self.key}")

    def to_dict(self) -> dict[str, Any]:
        """The resolved cell as written to ``config.json`` (with the paths a worker needs, which
        are not part of the key)."""
        checkpoint = self.settings.teacher.checkpoint
        return {"experiment": self.experiment, "method": self.method, "key": self.key,
                **self.identity(), "data_root": self.settings.data_root,
                "teacher_path": str(Path(checkpoint).resolve()) if checkpoint else None,
                "teacher_model_dir": str(Path(self.settings.teacher.model_dir).resolve())}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config.json") -> RunSpec:
        """The cell of a ``config.json``; fails if it no longer hashes to its key (the plugin or
        the schema changed since it was written)."""
        load_plugins()
        try:
            entry = METHODS.get(data["method"])
            cell = {k: copy.deepcopy(data[k]) for k in CELL_KEYS if k in data}
            cell["teacher"]["checkpoint"] = data.get("teacher_path")
            if data.get("teacher_model_dir"):
                cell["teacher"]["model_dir"] = data["teacher_model_dir"]
            settings = build(CellSettings, cell)
            params = build(entry.plugin.Params, data["params"])
        except (KeyError, TypeError, RegistryError, SchemaError) as error:
            raise HarnessError(f"{source}: not a run config ({error})") from None
        spec = cls(data["experiment"], settings, entry, params)
        if spec.key != data.get("key"):
            raise HarnessError(f"{source}: describes run {data.get('key')} but resolves to {spec.key} with "
                               f"this code (method '{entry.plugin_name}' or the schema changed); run the "
                               "experiment again with `python -m harness run`")
        return spec


@dataclass(frozen=True)
class Experiment:
    name: str
    path: Path
    cells: list[RunSpec]
    executor: ExecutorSettings = ExecutorSettings()
    report: tuple[str, ...] = ()  # outputs ``run`` writes to reports/<name>/ when the grid is done


# --------------------------------------------------------------------------- loading YAML
WHOLE_MAPPINGS = {("base", "teacher")}  # set whole by the file that names them, never merged


class _Document:
    """The merged content of a file and its includes, remembering which file set each key."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.origin: dict[tuple[str, ...], Path] = {}

    def merge(self, other: dict[str, Any], source: Path, prefix: tuple[str, ...] = (), into: dict | None = None) -> None:
        target = self.data if into is None else into
        for key, value in other.items():
            path = (*prefix, str(key))
            if isinstance(value, dict) and isinstance(target.get(key), dict) and path not in WHOLE_MAPPINGS:
                self.origin[path] = source
                self.merge(value, source, path, target[key])
            else:
                target[key] = copy.deepcopy(value)
                for known in [p for p in self.origin if p[: len(path)] == path]:
                    del self.origin[known]
                self.origin[path] = source
                if isinstance(value, dict):
                    self._mark(value, source, path)

    def _mark(self, value: dict, source: Path, prefix: tuple[str, ...]) -> None:
        for key, item in value.items():
            self.origin[(*prefix, str(key))] = source
            if isinstance(item, dict):
                self._mark(item, source, (*prefix, str(key)))

    def file_of(self, dotted: str, default: Path) -> Path:
        parts = tuple(re.sub(r"\[\d+\]", "", dotted).split("."))
        for n in range(len(parts), 0, -1):
            if parts[:n] in self.origin:
                return self.origin[parts[:n]]
        return default


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int, first_line: int) -> None:
        super().__init__(f"line {line}: duplicate key {key!r} (first at line {first_line})")


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping with a repeated key, where PyYAML keeps the last
    silently (a typo'd copy of a block would override the real one). Merge keys (``<<``) may still
    be overridden: that is what they are for."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                if key in seen:
                    raise _DuplicateKey(key, key_node.start_mark.line + 1, seen[key])
                seen[key] = key_node.start_mark.line + 1
            except TypeError:
                continue  # an unhashable key: the base class reports it
        return super().construct_mapping(node, deep)


def parse_yaml(text: str) -> Any:
    """``text`` parsed safely, refusing repeated mapping keys (:class:`StrictLoader`)."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506  (a SafeLoader subclass)


def read_yaml_mapping(path: Path, shown: str, allowed_keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The YAML mapping in ``path`` (``{}`` for an empty file); one-line :class:`ConfigError` naming
    ``shown`` (and the line and column of a syntax error); with ``allowed_keys``, also for any
    other top-level key."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{shown}: file not found") from None
    except OSError as error:
        raise ConfigError(f"{shown}: cannot read ({error.strerror})") from None
    try:
        data = parse_yaml(text)
    except _DuplicateKey as error:
        raise ConfigError(f"{shown}: {error}") from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"{shown}: {where}YAML syntax error: {error.problem or error.context}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{shown}: YAML error: {str(error).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{shown}: the top level must be a mapping, got {type(data).__name__}")
    if allowed_keys is not None:
        for key in data:
            if key not in allowed_keys:
                raise ConfigError(f"{shown}: {key}: unknown top-level key{suggest(str(key), allowed_keys)}")
    return data


def _load_document(path: Path, shown: str, document: _Document, stack: tuple[Path, ...]) -> None:
    stack = (*stack, path.resolve())
    data = read_yaml_mapping(path, shown, TOP_LEVEL_KEYS)
    includes = data.pop("include", None) or []
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError(f"{shown}: include: expected a file name or a list of file names")
    for include in includes:
        child = path.parent / include
        if child.resolve() in stack:
            chain = " -> ".join(p.name for p in (*stack, child.resolve()))
            raise ConfigError(f"{shown}: include: include cycle ({chain})")
        _load_document(child, include if Path(include).is_absolute() else str(child), document, stack)
    if len(stack) > 1:
        data.pop("name", None)  # an included file never names the experiment
    document.merge(data, Path(shown))


# --------------------------------------------------------------------------- expansion
def _set_dotted(target: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        node = target.setdefault(part, {})
        if not isinstance(node, dict):
            node = target[part] = {}
        target = node
    target[last] = value


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


class _Resolver:
    """Turns the merged document into validated cells, reporting errors by file and key."""

    def __init__(self, document: _Document, top: Path, shown: str) -> None:
        self.doc = document
        self.top = Path(shown)
        data = document.data
        self.name = data.get("name", top.stem)
        if not isinstance(self.name, str) or not SAFE_NAME.match(self.name):
            self.fail("name", f"must be letters, digits, '_', '-' or '.' (got {self.name!r})")
        for section in ("base", "methods", "grid", "executor"):
            if not isinstance(data.get(section, {}), dict):
                self.fail(section, "expected a mapping")
        self.base: dict[str, Any] = data.get("base") or {}
        self.methods: dict[str, Any] = data.get("methods") or {}
        self.grid: dict[str, Any] = data.get("grid") or {}
        self.exclude = data.get("exclude") or []
        try:
            self.executor = build(ExecutorSettings, data.get("executor") or {})
        except SchemaError as error:
            self.fail(f"executor.{error.path}" if error.path else "executor", error.message)
        self.report = self._report(data.get("report") or [])
        load_plugins()
        self._check_sections()

    def _report(self, outputs: Any) -> tuple[str, ...]:
        if not isinstance(outputs, list):
            self.fail("report", f"expected a list of outputs ({', '.join(REPORT_OUTPUTS)})")
        for index, output in enumerate(outputs):
            if output not in REPORT_OUTPUTS:
                self.fail(f"report[{index}]", f"unknown output {output!r}{suggest(str(output), REPORT_OUTPUTS)}; "
                          f"choose from {', '.join(REPORT_OUTPUTS)}")
        return tuple(dict.fromkeys(outputs))

    def fail(self, dotted: str, message: str) -> None:
        raise ConfigError(f"{self.doc.file_of(dotted, self.top)}: {dotted}: {message}")

    def _check_key(self, dotted: str, where: str) -> None:
        head = dotted.split(".")[0]
        if head in CELL_KEYS:
            return
        if head in METHODS:
            if "." not in dotted:
                self.fail(where, f"'{head}' is a method; write '{head}.PARAM'")
            return
        self.fail(where, f"unknown key '{head}'{suggest(head, [*CELL_KEYS, *METHODS.names()])}")

    def _check_sections(self) -> None:
        for key in self.base:
            if key not in CELL_KEYS:
                self.fail(f"base.{key}", f"unknown key{suggest(str(key), CELL_KEYS)}")
        for name in self.methods:
            if name not in METHODS:
                self.fail(f"methods.{name}", f"unknown method{suggest(str(name), METHODS.names())}")
        for key, values in self.grid.items():
            self._check_key(str(key), f"grid.{key}")
            if not isinstance(values, list) or not values:
                self.fail(f"grid.{key}", "expected a non-empty list of values")
        if not isinstance(self.exclude, list) or not all(isinstance(e, dict) for e in self.exclude):
            self.fail("exclude", "expected a list of mappings")
        self.exclude = [self._exclude_rule(i, rule) for i, rule in enumerate(self.exclude)]

    def _exclude_rule(self, index: int, rule: dict[str, Any]) -> dict[str, list[Any]]:
        """An exclude entry with list values and registered names in canonical form."""
        normalised = {}
        for key, value in rule.items():
            where = f"exclude[{index}].{key}"
            self._check_key(str(key), where)
            values = value if isinstance(value, list) else [value]
            registry = {"method": METHODS, "student": MODELS, "teacher.arch": MODELS}.get(key)
            try:
                if registry is not None:
                    values = [registry.canonical(v) for v in values]
                elif key == "dataset":
                    values = [get_dataset(v).name for v in values]
            except RegistryError as error:
                self.fail(where, str(error))
            normalised[str(key)] = values
        return normalised

    def _label(self, path: str, chosen: dict[str, int]) -> str:
        """Where a cell value at ``path`` came from: a grid entry or the base block."""
        for key, index in chosen.items():
            if path == key or path.startswith((f"{key}.", f"{key}[")):
                return f"grid.{key}[{index}]{path[len(key):]}"
        return f"base.{path}"

    def _method_params(self, entry: MethodEntry, dataset: str, combo: dict[str, tuple[int, Any]]) -> Any:
        """Defaults, then the plugin's block and grid values, then the preset's fixed values,
        then the preset's own block and grid values (so an ablation preset stays itself)."""
        plugin = entry.plugin
        params = plugin.default_params(dataset)

        def layers_of(name: str) -> list[tuple[str, dict[str, Any]]]:
            layers = [(f"methods.{name}", self.methods.get(name) or {})]
            for key, (index, value) in combo.items():
                head, _, field = key.partition(".")
                if head == name and field:
                    layers.append((f"grid.{key}[{index}]", {field: value}))
            return layers

        layers = layers_of(plugin.name)
        if entry.name != plugin.name:
            layers += [(f"preset {entry.name}", dict(entry.overrides)), *layers_of(entry.name)]
        for where, values in layers:
            try:
                params = build(plugin.Params, values, "", base=params)
            except SchemaError as error:
                if where.startswith("grid."):
                    self.fail(where, error.message)
                self.fail(f"{where}.{error.path}" if error.path else where, error.message)
        return params

    def cell(self, combo: dict[str, tuple[int, Any]]) -> RunSpec:
        data = copy.deepcopy(self.base)
        chosen = {}
        for key, (index, value) in combo.items():
            if key.split(".")[0] in CELL_KEYS:
                _set_dotted(data, key, copy.deepcopy(value))
                chosen[key] = index
        for required in ("method", "dataset", "student", "teacher"):
            if required not in data:
                self.fail("base", f"'{required}' is required (in base or grid)")
        self._method_schedule_defaults(data)
        try:
            settings = build(CellSettings, data)
        except SchemaError as error:
            self.fail(self._label(error.path, chosen), error.message)
        teacher = settings.teacher
        for path, lookup in (("method", METHODS.get), ("dataset", get_dataset),
                             ("student", MODELS.get), ("teacher.arch", MODELS.get)):
            value = teacher.arch if path == "teacher.arch" else getattr(settings, path)
            if value is None:
                continue  # a RobustBench teacher has no harness architecture
            try:
                lookup(value)
            except RegistryError as error:
                self.fail(self._label(path, chosen), str(error))
        if teacher.normalize is not None and len(teacher.normalize.mean) != get_dataset(settings.dataset).channels:
            self.fail(self._label("teacher.normalize.mean", chosen),
                      f"{len(teacher.normalize.mean)} values for the {get_dataset(settings.dataset).channels} "
                      f"channels of {settings.dataset}")
        if teacher.robustbench is not None:
            from harness.zoo import check_entry  # imports robustbench only for such a teacher

            try:
                check_entry(teacher, get_dataset(settings.dataset))
            except HarnessError as error:
                self.fail(self._label("teacher.robustbench", chosen), str(error))
        entry = METHODS.get(settings.method)
        if entry.plugin.needs_train_data and not get_dataset(settings.dataset).has_train:
            self.fail(self._label("method", chosen), f"'{entry.name}' distils with the training set and dataset "
                      f"'{settings.dataset}' has no train split")
        canonical = {"method": entry.name, "dataset": get_dataset(settings.dataset).name,
                     "student": MODELS.canonical(settings.student),
                     "teacher": teacher if teacher.arch is None else replace(teacher, arch=MODELS.canonical(teacher.arch))}
        settings = replace(settings, **canonical)
        settings = self._resolve_threat(settings, chosen)
        params = self._method_params(entry, settings.dataset, combo)
        return RunSpec(self.name, settings, entry, params)

    @staticmethod
    def _method_schedule_defaults(data: dict[str, Any]) -> None:
        """Fill the schedule keys the method declares (``Method.schedule_defaults``, e.g. DFHL's
        weight decay and LR floor) where the file leaves them unset; the file always wins."""
        name = data["method"]
        if not isinstance(name, str) or name not in METHODS or not isinstance(data.get("schedule", {}), dict):
            return  # an unknown method or a bad schedule block is reported by the checks that follow
        declared = METHODS.get(name).plugin.schedule_defaults
        if declared:
            schedule = data.setdefault("schedule", {})
            for key, value in declared.items():
                schedule.setdefault(key, value)

    def _resolve_threat(self, settings: CellSettings, chosen: dict[str, int]) -> CellSettings:
        info = get_dataset(settings.dataset)
        threat = settings.threat
        epsilon = threat.epsilon if threat.epsilon is not None else info.epsilon
        step = threat.step_size if threat.step_size is not None else info.step_size
        if step > epsilon:
            self.fail(self._label("threat.step_size", chosen), f"must be <= epsilon ({epsilon:g}), got {step:g}")
        return replace(settings, threat=replace(threat, epsilon=epsilon, step_size=step))

    def excluded(self, spec: RunSpec) -> bool:
        flat = cell_values(spec)
        return any(all(_matches(flat.get(key), values) for key, values in rule.items()) for rule in self.exclude)

    def cells(self) -> list[RunSpec]:
        keys = list(self.grid)
        seen: dict[str, RunSpec] = {}
        for indices in itertools.product(*(range(len(self.grid[k])) for k in keys)):
            combo = {k: (i, self.grid[k][i]) for k, i in zip(keys, indices)}
            spec = self.cell(combo)
            if spec.relative_dir() not in seen and not self.excluded(spec):
                seen[spec.relative_dir()] = spec
        return list(seen.values())


def cell_values(spec: RunSpec) -> dict[str, Any]:
    """A cell's resolved values by dotted key (``seed``, ``schedule.epochs``, ``ferd.gamma``, its
    hyper-parameters also under its plugin's name), as ``exclude`` rules and ``run --only`` match them."""
    flat = _flatten(to_plain(spec.settings))
    for prefix in {spec.entry.plugin_name, spec.method}:
        flat.update(_flatten(to_plain(spec.params), prefix))
    return flat


def select_cells(experiment: Experiment, only: list[str], shown: str) -> Experiment:
    """The experiment reduced to the cells whose value at every ``KEY=V1,V2,...`` of ``only`` is one
    of its values (``run --only``; values read as YAML scalars, so ``seed=1`` is the number).

    Each key must be a key of the grid's cells, each value must be some cell's, and together they
    must leave a cell: a typo is one :class:`ConfigError` line, never a silently smaller run.
    """
    rules: dict[str, list[Any]] = {}
    for item in only:
        key, _, text = item.partition("=")
        key = key.strip()
        values = [_scalar(value) if value.strip() else None for value in text.split(",")]
        if not key or not text or None in values:
            raise ConfigError(f"{shown}: --only {item!r}: expected KEY=VALUE[,VALUE...], e.g. method=cmi,dfhl")
        if key in rules:
            raise ConfigError(f"{shown}: --only {key} given twice; list its values once ({key}=A,B)")
        rules[key] = values
    cells = [(spec, cell_values(spec)) for spec in experiment.cells]
    for key, values in rules.items():
        present = [flat[key] for _, flat in cells if key in flat]
        if not present:
            known = sorted({k for _, flat in cells for k in flat})
            raise ConfigError(f"{shown}: --only {key}: no cell has this key{suggest(key, known)}")
        for value in values:
            if not any(_matches(v, [value]) for v in present):
                choices = ", ".join(sorted({str(v) for v in present}))
                raise ConfigError(f"{shown}: --only {key}={value}: no cell has this value (the grid's: {choices})")
    chosen = [spec for spec, flat in cells if all(_matches(flat.get(k), v) for k, v in rules.items())]
    if not chosen:
        raise ConfigError(f"{shown}: --only {' '.join(only)}: no cell of the grid matches all of them")
    return replace(experiment, cells=chosen)


def _scalar(text: str) -> Any:
    """A command-line value as YAML reads it (``1`` the number, ``true`` the boolean), else the text."""
    try:
        value = parse_yaml(text)
    except yaml.YAMLError:
        return text.strip()
    return value if isinstance(value, (str, int, float, bool)) else text.strip()


def _matches(value: Any, candidates: list[Any]) -> bool:
    """Whether a cell's resolved ``value`` is among an exclude rule's ``candidates``; numbers compare
    as numbers, so ``5/6`` or ``1e-3`` written in an exclude match the float of the cell."""
    if isinstance(value, float):
        numbers = []
        for candidate in candidates:
            try:
                numbers.append(as_float(candidate, "exclude"))
            except SchemaError:
                continue
        return any(math.isclose(value, number, rel_tol=1e-12, abs_tol=0) for number in numbers)
    return value in candidates


def load_experiment(path: str | Path) -> Experiment:
    """Parse, merge includes, expand and validate an experiment file.

    Raises :class:`ConfigError` (one line: file, key path, problem) on any bad input.
    """
    path = Path(path)
    document = _Document()
    _load_document(path, str(path), document, ())
    return _resolve(document, path, str(path))


def experiment_from_mapping(data: dict[str, Any], shown: str) -> Experiment:
    """An experiment given as a mapping (e.g. built from command-line options); errors name ``shown``."""
    document = _Document()
    document.merge(data, Path(shown))
    return _resolve(document, Path(shown), shown)


def _resolve(document: _Document, path: Path, shown: str) -> Experiment:
    resolver = _Resolver(document, path, shown)
    cells = resolver.cells()
    if not cells:
        raise ConfigError(f"{shown}: exclude: every cell of the grid is excluded")
    return Experiment(resolver.name, path, cells, resolver.executor, resolver.report)
