"""The experiment grid described by the workflow's ``config.yaml``.

``workflow/rules/common.smk`` (the Snakemake side) and ``medcli report`` (which lists skipped and missing cells)
both expand the grid here, so they can never disagree about which runs exist. Config keys are documented in
``workflow/schemas/config.schema.yaml`` and in the README.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__, paths
from .errors import MedcliError

PRETRAIN_DATASET = "_pretrain"


@dataclass(frozen=True)
class Cell:
    """One training run of the grid."""

    dataset: str
    backbone: str
    strategy: str
    seed: int
    fold: int
    weights: str  # "none", "imagenet", "pretrained" (the demo's pretraining step) or a file

    @property
    def config_name(self) -> str:
        return paths.run_name(self.backbone, self.strategy)


@dataclass
class Grid:
    cells: list[Cell] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # {dataset, backbone, strategy, reason}


def load_config(path: str | os.PathLike) -> dict:
    import yaml

    try:
        with open(path) as fh:
            return yaml.safe_load(fh) or {}
    except FileNotFoundError:
        raise MedcliError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        raise MedcliError(f"{path}: not valid YAML ({exc})") from None


#: The workflow config's JSON schema (``workflow/schemas/config.schema.yaml`` of the repository medcli runs from).
CONFIG_SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"
#: At most this many problems of a config are listed (the rest are counted).
MAX_PROBLEMS = 5


def check_config(config: dict, schema: str | os.PathLike | dict = CONFIG_SCHEMA, *, check_inputs: bool = True) -> dict:
    """The workflow config with every optional section filled in, or one :class:`MedcliError` listing its problems.

    Checks, in order, each step only when the one before found nothing: the training settings
    (:func:`check_settings`), the JSON schema (unknown keys, types, bounds, choices; each problem one line
    ``config: <key path>: <what is wrong> (allowed: ...)``), the names of strategies, heads, configurations
    (ensemble members, ``report.reference``) and, with ``check_inputs``, of backbones, ensemble and CAM methods
    against medcli's registries, and that each dataset ``path`` exists and holds images (a folder with at least one
    image or DICOM file, or a ``.csv`` / ``.npz`` file). ``check_inputs=False`` leaves out what the workflow's
    main process has checked already (jobs parse the workflow again) and what may need the network (Hub names).

    Defaults come from the schema (``default:``): ``resources`` (1 thread, 4000 MB, 30 minutes per stage),
    ``eval``, ``report``, the dataset keys and the folders. ``config`` itself is not modified. The error's
    message has one line per problem (at most :data:`MAX_PROBLEMS`, then a count of the others).
    """
    import copy

    checked = copy.deepcopy(config)
    check_settings(checked)
    steps = [lambda: _schema_problems(checked, schema), lambda: _name_problems(checked, check_inputs)]
    if check_inputs:
        steps.append(lambda: _dataset_problems(checked))
    for step in steps:
        problems = step()
        if problems:
            more = len(problems) - MAX_PROBLEMS
            raise MedcliError("\n".join(problems[:MAX_PROBLEMS] + ([f"config: and {more} more problem(s)"] if more > 0 else [])))
    return checked


def _schema_validator(schema: dict):
    """A JSON-schema validator that fills in each missing property's ``default`` before checking the object."""
    import copy

    from jsonschema import Draft202012Validator, validators

    check_properties = Draft202012Validator.VALIDATORS["properties"]

    def properties_with_defaults(validator, properties, instance, where):
        if validator.is_type(instance, "object"):
            for name, sub in properties.items():
                if isinstance(sub, dict) and "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from check_properties(validator, properties, instance, where)

    return validators.extend(Draft202012Validator, {"properties": properties_with_defaults})(schema)


def _schema_problems(config: dict, schema: str | os.PathLike | dict) -> list[str]:
    import yaml

    if not isinstance(schema, dict):
        schema = yaml.safe_load(Path(schema).read_text())
    if not isinstance(config, dict):
        return [f"config: the top level must be a mapping of keys (datasets, backbones, ...), not {type(config).__name__}"]
    errors = sorted(_schema_validator(schema).iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path])
    problems = []
    for error in errors:
        for line in _describe_schema_error(error):
            if line not in problems:
                problems.append(line)
    return problems


def _key(path) -> str:
    """``datasets.demo.folds``, ``ensembles.all.methods[0]``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text or "(top level)"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe_schema_error(error) -> list[str]:
    """One line per problem of a jsonschema ``ValidationError``: the key path, what is wrong, what is allowed."""
    import difflib

    path, kind, value, schema = list(error.absolute_path), error.validator, error.instance, error.schema
    described = f" ({schema['description']})" if isinstance(schema, dict) and schema.get("description") else ""
    if "propertyNames" in error.schema_path:  # the key itself is wrong: the instance is the key
        allowed = f"allowed: {', '.join(map(str, error.validator_value))}" if kind == "enum" else f"names must match {error.validator_value}"
        close = difflib.get_close_matches(str(value), [str(v) for v in error.validator_value], n=1) if kind == "enum" else []
        hint = f"; did you mean {close[0]}?" if close else ""
        return [f"config: {_key(path + [value])}: unknown name{hint} ({allowed})"]
    if kind == "additionalProperties":
        known = sorted((schema.get("properties") or {}))
        lines = []
        for name in sorted(set(value) - set(known), key=str):
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            lines.append(f"config: {_key(path + [name])}: unknown key{hint} (allowed: {', '.join(known) or 'none'})")
        return lines
    if kind == "required":
        missing = [name for name in error.validator_value if name not in value]
        return [f"config: {_key(path + [name])}: missing; this key is required" for name in missing]
    if kind == "enum":
        return [f"config: {_key(path)}: {_show(value)} is not allowed (allowed: {', '.join(map(str, error.validator_value))})"]
    if kind == "const":
        return [f"config: {_key(path)}: {_show(value)} is not allowed (allowed: {error.validator_value!r})"]
    if kind == "type":
        wanted = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        names = {"integer": "a whole number", "number": "a number", "string": "a text", "boolean": "true or false",
                 "object": "a mapping of keys", "array": "a list", "null": "null"}
        return [f"config: {_key(path)}: {_show(value)} is not {' or '.join(names.get(w, w) for w in wanted)}"]
    if kind == "oneOf" and all(isinstance(s, dict) and set(s) == {"required"} for s in error.validator_value):
        names = [name for s in error.validator_value for name in s["required"]]
        given = [name for name in names if name in value]
        what = f"gives {' and '.join(given)}; keep one of them" if given else f"needs one of {' or '.join(names)}"
        return [f"config: {_key(path)}: {what}{described}"]
    if kind in ("oneOf", "anyOf", "not"):
        return [f"config: {_key(path)}: {_show(value)} is not allowed{described.replace(' (', ' (allowed: ', 1)}"]
    if kind in ("minProperties", "minItems"):
        return [f"config: {_key(path)}: give at least {error.validator_value} {'entries' if kind == 'minProperties' else 'items'}"]
    return [f"config: {_key(path)}: {error.message.splitlines()[0][:200]}"]


def _mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _train_scopes(config: dict):
    """``(config key, {setting: value})`` of every ``train:``-like section of a config (sections of the wrong type
    are left out: the schema reports them)."""
    yield "train", config.get("train")
    for name, spec in _mapping(config.get("datasets")).items():
        yield f"datasets.{name}.train", _mapping(spec).get("train")
    for group in ("backbones", "strategies"):
        for name, spec in _mapping(config.get(group)).items():
            yield f"{group}.{name}", spec
    yield "pretrain.train", _mapping(config.get("pretrain")).get("train")


def _name_problems(config: dict, check_inputs: bool) -> list[str]:
    """Names a schema cannot know: registered strategies, heads, backbones, ensemble and CAM methods; configurations."""
    from .models.heads import list_heads
    from .strategies import list_strategies

    problems = []
    strategies = list_strategies()
    for name in config["strategies"]:
        if name not in strategies:
            problems.append(f"config: strategies.{name}: unknown strategy (allowed: {', '.join(strategies)})")
    heads = list_heads()
    for where, scope in _train_scopes(config):
        if isinstance(scope, dict) and scope.get("head") is not None and scope["head"] not in heads:
            problems.append(f"config: {where}.head: unknown head {_show(scope['head'])} (allowed: {', '.join(heads)})")
    configurations = {paths.run_name(b, s) for b in config["backbones"] for s in config["strategies"]}
    wanted = [(f"ensembles.{name}.members", spec.get("members")) for name, spec in (config.get("ensembles") or {}).items()]
    wanted.append(("gradcam.configurations", (config.get("gradcam") or {}).get("configurations")))
    wanted.append(("report.reference", [config["report"]["reference"]] if config.get("report", {}).get("reference") else None))
    for where, names in wanted:
        unknown = [n for n in names or () if names != "all" and n not in configurations]
        if unknown:
            problems.append(f"config: {where}: {', '.join(unknown)} not in this grid (allowed: {', '.join(sorted(configurations))})")
    if not check_inputs:
        return problems
    from .models import get_backbone

    for name in config["backbones"]:
        try:
            get_backbone(name)
        except MedcliError as exc:
            problems.append(f"config: backbones.{name}: {exc}")
    from .ensemble import list_methods as ensemble_methods
    from .gradcam import list_methods as cam_methods

    methods = ensemble_methods()
    for name, spec in (config.get("ensembles") or {}).items():
        for method in spec.get("methods") or ():
            if method not in methods:
                problems.append(f"config: ensembles.{name}.methods: unknown method {method!r} (allowed: {', '.join(methods)})")
    cam = (config.get("gradcam") or {}).get("method")
    if cam is not None and cam not in cam_methods():
        problems.append(f"config: gradcam.method: unknown method {cam!r} (allowed: {', '.join(cam_methods())})")
    return problems


#: Files seen at most when looking for a dataset's first image (a folder this big without images is left to the jobs).
_IMAGE_SEARCH_LIMIT = 100_000


def _dataset_problems(config: dict) -> list[str]:
    """Each dataset ``path``: it exists and holds images (cheap: the first image file found is enough)."""
    problems = []
    for name, spec in config["datasets"].items():
        if spec.get("synth") or spec.get("path") is None:
            continue
        problem = dataset_path_problem(spec["path"], spec.get("layout", "auto"))
        if problem:
            problems.append(f"config: datasets.{name}.path: {problem}")
    return problems


def dataset_path_problem(path: str | os.PathLike, layout: str = "auto") -> str | None:
    """What makes ``path`` no dataset (None when it looks like one): missing, a file that is not a ``.csv`` manifest
    or ``.npz`` archive, or a folder without any image or DICOM file (by extension, or by content for files without
    a known extension). Cheap: stops at the first image. Relative paths are relative to the current folder."""
    from .data.decode import sniff_format
    from .data.layouts import IMAGE_EXTENSIONS, NON_IMAGE_EXTENSIONS, NON_IMAGE_NAMES

    path = Path(path)
    where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
    if not path.exists():
        return f"{path} does not exist{where}; give the dataset's folder, .csv manifest or .npz archive"
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix not in (".csv", ".npz") or (layout not in ("auto", suffix[1:])):
            return f"{path} is a file; a dataset file must be a .csv manifest or a .npz archive (layout {layout})"
        return None
    if layout in ("csv", "npz"):
        return f"{path} is a folder; layout {layout} needs the .{layout} file itself"
    seen = 0
    for folder, dirs, files in os.walk(path, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for file in files:
            seen += 1
            suffix = Path(file).suffix.lower()
            if suffix in IMAGE_EXTENSIONS:
                return None
            if suffix not in NON_IMAGE_EXTENSIONS and file.lower() not in NON_IMAGE_NAMES and not file.startswith("."):
                if sniff_format(Path(folder, file)) is not None:
                    return None
            if seen >= _IMAGE_SEARCH_LIMIT:
                return None
    return (f"{path}{where} holds no images (no image or DICOM file in it or its subfolders); "
            "point it at the dataset's folder (class folders, or train/val/test folders of class folders)")


def folds_of(config: dict, dataset: str) -> list[int]:
    k = int(config["datasets"][dataset].get("folds", 5))
    return list(range(max(k, 1)))


def check_settings(config: dict) -> None:
    """Check every training setting of a workflow config against the settings schema, before the JSON schema.

    ``train:`` sections (global, per dataset, backbone, strategy and pretraining): unknown keys are one-line errors
    naming the config key with the closest setting names; numbers that YAML 1.1 reads as strings (``1e-3``) become
    numbers, in place, for settings that are numbers. Dataset reading keys (``window``, ``frame``, ``group_by``) are
    checked as ``medcli train`` would check them. Raises :class:`MedcliError`; types and bounds of everything else
    are left to the JSON schema (``workflow/schemas/config.schema.yaml``).
    """
    from .training.config import check_keys, check_value, kind_of

    if not isinstance(config, dict):
        return  # the schema says what is wrong
    for where, scope in _train_scopes(config):
        if not isinstance(scope, dict):
            continue
        check_keys({k: v for k, v in scope.items() if k != "weights"}, f"config key {where}: ")
        for key, value in scope.items():
            if key != "weights" and isinstance(value, str) and kind_of(key) == "float":
                scope[key] = check_value(key, value, f"config key {where}.{key}")
    for name, spec in _mapping(config.get("datasets")).items():
        for key in DATASET_READING:
            if isinstance(spec, dict) and spec.get(key) is not None:
                check_value(key, spec[key], f"config key datasets.{name}.{key}")


def weights_for(config: dict, backbone: str, strategy: str) -> str:
    """The weights a cell starts from: none for scratch, else the backbone's or the global ``weights``."""
    from .models import get_backbone

    if strategy == "scratch":
        return "none"
    spec = str((config.get("backbones") or {}).get(backbone, {}).get("weights", config.get("weights", "imagenet")))
    if spec == "imagenet" and get_backbone(backbone).imagenet_weights is None and config.get("pretrain"):
        return "pretrained"
    return spec


def expand_grid(config: dict) -> Grid:
    """Every valid cell of datasets × backbones × strategies × seeds × folds, and the skipped ones with reasons.

    A cell is skipped when its combination makes no sense or duplicates another one (the rules of
    :mod:`medcli.strategies`), or when it needs the demo's pretraining and the config has none.
    """
    from .strategies import combination_note, combination_problem

    grid = Grid()
    for dataset in config["datasets"]:
        for backbone in config["backbones"]:
            for strategy in config["strategies"]:
                weights = weights_for(config, backbone, strategy)
                given = None if weights == "none" else weights
                if weights == "pretrained" and not config.get("pretrain"):
                    reason = "weights 'pretrained' need a 'pretrain' section in the config"
                else:
                    decay = _scope_settings(config, dataset, backbone, strategy).get("layer_decay")
                    reason = (combination_problem(backbone, strategy, given, layer_decay=decay)
                              or combination_note(backbone, strategy, given))
                if reason:
                    grid.skipped.append({"dataset": dataset, "backbone": backbone, "strategy": strategy, "reason": reason})
                    continue
                for seed in config["seeds"]:
                    for fold in folds_of(config, dataset):
                        grid.cells.append(Cell(dataset, backbone, strategy, int(seed), fold, weights))
    return grid


#: Training cells per workflow job when ``resources.cells_per_job`` is not set (see :func:`plan_batches`).
DEFAULT_CELLS_PER_JOB = 15  # at most; a job holds one configuration's folds of one seed


@dataclass(frozen=True)
class Batch:
    """Training cells of one configuration (dataset x backbone x strategy) and seed that one workflow job trains
    in one process (``medcli train --cells``): one SLURM job, one start-up, one rule."""

    dataset: str
    backbone: str
    strategy: str
    seed: int
    index: int  # 0, 1, ... within the configuration and seed (more than one only past cells_per_job folds)
    cells: tuple[Cell, ...]

    @property
    def name(self) -> str:
        """``<backbone>__<strategy>/seed-<s>/batch-<index>``: the batch's settings and log files, under its dataset."""
        return f"{paths.run_name(self.backbone, self.strategy)}/seed-{self.seed}/batch-{self.index}"

    @property
    def rule(self) -> str:
        """The Snakemake rule name, an identifier: ``train__<dataset>__<backbone>__<strategy>__s<seed>__<index>``."""
        import re

        parts = (self.dataset, self.backbone, self.strategy, f"s{self.seed}", self.index)
        return "train__" + "__".join(re.sub(r"\W+", "_", str(part)) for part in parts)


def cells_per_job(config: dict) -> int:
    """``resources.cells_per_job`` (default :data:`DEFAULT_CELLS_PER_JOB`)."""
    return int((config.get("resources") or {}).get("cells_per_job") or DEFAULT_CELLS_PER_JOB)


def cells_per_gpu(config: dict) -> int:
    """``resources.cells_per_gpu``: cells training at the same time inside one job (default 1)."""
    return int((config.get("resources") or {}).get("cells_per_gpu") or 1)


def tracking_env(config: dict, logs: str) -> dict[str, str]:
    """``{"MEDCLI_TRACK": tracker, "MEDCLI_TRACK_DIR": folder}`` for the config's ``track:`` key (default
    ``tensorboard``), which every training job inherits (:func:`medcli.training.config.settings_from_env`).
    TensorBoard writes under ``<logs>/tensorboard``; MLflow uses ``$MLFLOW_TRACKING_URI`` when set, else the local
    store ``mlruns``; a ``MEDCLI_TRACK_DIR`` the user set wins over both folders. Raises :class:`MedcliError` when the tracker's package is not installed, before any job runs."""
    from .training.tracking import check_available

    track = config.get("track", "tensorboard")
    check_available(track, "config: track:", "track: none")
    folder = paths.DEFAULT_MLFLOW_STORE if track == "mlflow" else paths.tensorboard_dir(logs)
    return {"MEDCLI_TRACK": track, "MEDCLI_TRACK_DIR": os.environ.get("MEDCLI_TRACK_DIR") or folder}


def plan_batches(grid: Grid, per_job: int) -> list[Batch]:
    """The grid's training cells in jobs of at most ``per_job`` cells: one configuration and seed per job, its folds
    in order (more than one job per seed only when it has more than ``per_job`` folds).

    A job never mixes seeds, configurations or datasets, so adding seeds or configurations to a config adds jobs
    and leaves the existing ones (their cells, their rerun triggers) as they were: Snakemake trains only the new
    cells. (A job holding several seeds would be fuller, but adding a seed would change it, and Snakemake reruns a
    job whose outputs change, training its finished cells again.) Rule names are unique (a :class:`MedcliError`
    otherwise: two names that differ only in punctuation).
    """
    if per_job < 1:
        raise MedcliError(f"config key resources.cells_per_job {per_job}: must be at least 1")
    groups: dict[tuple[str, str, str, int], list[Cell]] = {}
    for cell in grid.cells:
        groups.setdefault((cell.dataset, cell.backbone, cell.strategy, cell.seed), []).append(cell)
    batches = []
    for (dataset, backbone, strategy, seed), cells in groups.items():
        cells.sort(key=lambda c: c.fold)
        for index, start in enumerate(range(0, len(cells), per_job)):
            batches.append(Batch(dataset, backbone, strategy, seed, index, tuple(cells[start:start + per_job])))
    rules: dict[str, Batch] = {}
    for batch in batches:
        if batch.rule in rules:
            other = rules[batch.rule]
            raise MedcliError(f"datasets/backbones/strategies {other.dataset}/{other.backbone}/{other.strategy} and "
                              f"{batch.dataset}/{batch.backbone}/{batch.strategy} give the same workflow rule name; rename one")
        rules[batch.rule] = batch
    return batches


def _scope_settings(config: dict, dataset: str, backbone: str, strategy: str) -> dict[str, Any]:
    """The ``train:`` settings of one configuration: global < dataset < backbone < strategy (checked)."""
    spec = config["datasets"][dataset]
    return _checked_scopes((("train", config.get("train")), (f"datasets.{dataset}.train", spec.get("train")),
                            (f"backbones.{backbone}", (config.get("backbones") or {}).get(backbone)),
                            (f"strategies.{strategy}", (config.get("strategies") or {}).get(strategy))))


def train_settings(config: dict, cell: Cell) -> dict[str, Any]:
    """The training settings of one cell, checked against :class:`~medcli.training.config.TrainConfig`'s schema.

    Global ``train`` < dataset ``train`` < backbone < strategy overrides, then the dataset's reading options
    (``layout``, ``aliases``, ``skip_bad``) and the cell's coordinates (backbone, strategy, seed, fold). The job's
    paths and weights are added by :func:`job_settings`. Raises :class:`MedcliError` naming the config key of an
    unknown setting or a bad value.
    """
    spec = config["datasets"][cell.dataset]
    settings = _scope_settings(config, cell.dataset, cell.backbone, cell.strategy)
    settings.update(layout=spec.get("layout", "auto"), aliases=dict(spec.get("aliases") or {}), skip_bad=bool(spec.get("skip_bad", False)))
    settings.update({key: spec[key] for key in DATASET_READING if spec.get(key) is not None and spec.get(key) is not False})
    settings.update(backbone=cell.backbone, strategy=cell.strategy, seed=cell.seed, fold=cell.fold)
    return settings


def _checked_scopes(scopes) -> dict[str, Any]:
    """Merge ``(config key, {setting: value})`` scopes in order (later wins), every key and value checked."""
    from .training.config import check_keys, check_value

    settings: dict[str, Any] = {}
    for where, scope in scopes:
        scope = {k: v for k, v in (scope or {}).items() if k != "weights"}
        check_keys(scope, f"config key {where}: ")
        settings.update({k: check_value(k, v, f"config key {where}.{k}") for k, v in scope.items()})
    return settings


def job_settings(settings: dict[str, Any], **job) -> str:
    """Everything ``medcli train --config FILE`` needs for one job (:func:`job_body`), as the JSON text the rule
    writes to FILE. The text is also the rule's rerun trigger: a job reruns exactly when its own settings change.
    """
    import json

    return json.dumps(job_body(settings, **job), sort_keys=True)


def job_body(settings: dict[str, Any], *, data: str, name: str, weights: str, out: str, results: str, work: str, cache: str,
             splits: str | None = None) -> dict[str, Any]:
    """A cell's training settings plus the job's data, splits, weights and folders, every key checked."""
    from .training.config import check_keys

    body = {**settings, "data": str(data), "dataset_name": name, "weights": str(weights), "out": str(out),
            "results": str(results), "work": str(work), "cache_dir": str(cache)}
    if splits is not None:
        body["splits"] = str(splits)
    check_keys(body)
    return body


def figure_cells(config: dict, cells) -> list[Cell]:
    """The cells among ``cells`` whose evaluation draws figures, by ``eval.figures``: ``first`` (default): each
    configuration's first run (the first seed, fold 0), ``all`` or ``none``. Raises :class:`MedcliError` for
    another value."""
    mode = (config.get("eval") or {}).get("figures", "first")
    if mode not in ("first", "all", "none"):
        raise MedcliError(f"config key eval.figures {mode!r}: choose first, all or none")
    if mode != "first":
        return list(cells) if mode == "all" else []
    first_seed = int(config["seeds"][0])
    return [c for c in cells if c.seed == first_seed and c.fold == 0]


def batch_settings(cells: list[dict[str, Any]]) -> tuple[str, str]:
    """``(common, cells)``: the JSON texts of a batch job's ``medcli train --config COMMON --cells CELLS`` files, from
    each cell's settings (as :func:`job_body` makes them): the settings every cell shares, and per cell the
    rest (seed, fold, run folder). Both texts together are the job's rerun trigger."""
    import json

    first = cells[0]
    common = {k: v for k, v in first.items() if all(k in c and c[k] == v for c in cells[1:])}
    rest = [{k: v for k, v in c.items() if k not in common} for c in cells]
    return json.dumps(common, sort_keys=True), json.dumps(rest, sort_keys=True)


#: Dataset keys that are also training settings (how images are decoded, how splits are made), passed on when set.
DATASET_READING = ("window", "frame", "group_by", "allow_missing_classes")


def dataset_args(config: dict, dataset: str) -> str:
    """``medcli data inspect`` / ``medcli split`` options that say how to read a dataset (layout, aliases, window, frame)."""
    spec = config["datasets"][dataset]
    args = [f"--layout {spec.get('layout', 'auto')}"]
    for raw, canonical in sorted((spec.get("aliases") or {}).items()):
        args.append(f"--alias {_quote(f'{raw}={canonical}')}")
    if spec.get("window") is not None:
        args.append(f"--window {_quote(spec['window'])}")
    if spec.get("frame") is not None:
        args.append(f"--frame {int(spec['frame'])}")
    return " ".join(args)


def dataset_path(config: dict, dataset: str) -> str:
    """Where a dataset lives: its ``path``, or the folder its ``synth`` section is generated into."""
    if dataset == PRETRAIN_DATASET or config["datasets"][dataset].get("synth"):
        return paths.synth_data_dir(config.get("work", paths.DEFAULT_WORK), dataset)
    return str(config["datasets"][dataset]["path"])


def rerun_token(config: dict) -> str:
    """Changes to this string (medcli's version, or the config's ``rerun_token``) make every job rerun."""
    return f"{__version__}:{config.get('rerun_token', '')}"


def _quote(value: object) -> str:
    import shlex

    return shlex.quote(str(value))


def missing_runs(config: dict, results: str | os.PathLike) -> list[Cell]:
    """Cells of the grid whose run folder has no model (a failed or not yet finished job)."""
    grid = expand_grid(config)
    return [c for c in grid.cells if not Path(paths.model_file(paths.run_dir(results, c.dataset, c.backbone, c.strategy, c.seed, c.fold))).exists()]


def synth_args(spec: dict) -> str:
    """``medcli data synth`` options from a config ``synth`` section."""
    names = {"classes": "--classes", "per_class": "--per-class", "size": "--size", "channels": "--channels", "signal": "--signal",
             "noise": "--noise", "per_group": "--per-group", "seed": "--seed", "layout": "--layout"}
    return " ".join(f"{names[k]} {_quote(v)}" for k, v in sorted(spec.items()))


def split_args(config: dict, dataset: str) -> str:
    spec = config["datasets"][dataset]
    args = [f"--folds {int(spec.get('folds', 5))}", f"--seed {int(spec.get('split_seed', 0))}",
            f"--test-fraction {float(spec.get('test_fraction', 0.2))}"]
    if spec.get("drop_test_duplicates"):
        args.append("--drop-test-duplicates")
    if spec.get("skip_bad"):
        args.append("--skip-bad")
    if spec.get("group_by"):
        args.append(f"--group-by {_quote(spec['group_by'])}")
    if spec.get("allow_missing_classes"):
        args.append("--allow-missing-classes")
    return " ".join(args)


def pretrain_settings(config: dict, backbone: str) -> dict[str, Any]:
    """The demo's pretraining run: the backbone from scratch on the synthetic source task (seed 0, fold 0).

    Global ``train`` < backbone < the pretraining's own epochs, channels and ``pretrain.train``.
    """
    pre = config["pretrain"]
    settings = _checked_scopes((("train", config.get("train")), (f"backbones.{backbone}", (config.get("backbones") or {}).get(backbone))))
    settings["epochs"] = int(pre.get("epochs", 10))
    settings["channels"] = int(pre["synth"].get("channels", settings.get("channels", 3)))
    settings.update(_checked_scopes((("pretrain.train", pre.get("train")),)))
    settings.update(backbone=backbone, strategy="scratch", seed=0, fold=0)
    return settings


GRADCAM_DEFAULTS = {"configurations": "all", "split": "test", "method": "gradcam", "n": 8, "target": "pred"}


def gradcam_settings(config: dict) -> dict[str, Any] | None:
    """The config's ``gradcam`` section over its defaults (seeds: the first one; folds: fold 0); None without one."""
    spec = config.get("gradcam")
    if not spec:
        return None
    settings = {**GRADCAM_DEFAULTS, **spec}
    settings.setdefault("seeds", [config["seeds"][0]])
    settings.setdefault("folds", [0])
    return settings


def gradcam_cells(config: dict, grid: Grid) -> list[Cell]:
    """The runs that get Grad-CAM galleries: the chosen configurations, seeds and folds present in the grid.

    A configuration named in ``gradcam.configurations`` that the grid does not train is an error (a typo would
    otherwise silently produce no galleries).
    """
    settings = gradcam_settings(config)
    if settings is None:
        return []
    wanted = settings["configurations"]
    if wanted != "all":
        known = {c.config_name for c in grid.cells}
        unknown = sorted(set(wanted) - known)
        if unknown:
            raise MedcliError(f"config key gradcam.configurations: {', '.join(unknown)} not trained by this grid; "
                              f"choose among {', '.join(sorted(known))} (or 'all')")
    seeds, folds = {int(s) for s in settings["seeds"]}, {int(f) for f in settings["folds"]}
    return [c for c in grid.cells
            if (wanted == "all" or c.config_name in wanted) and c.seed in seeds and c.fold in folds]


def gradcam_args(config: dict) -> str:
    """``medcli gradcam`` options (beyond the run folder and the split) from the config's ``gradcam`` section."""
    s = gradcam_settings(config) or GRADCAM_DEFAULTS
    return f"--method {_quote(s['method'])} --n {int(s['n'])} --target {_quote(s['target'])}"


def describe(config: dict, grid: Grid) -> str:
    """The experiment as JSON: resolved config, its hash, the cells and the skipped cells with reasons."""
    import hashlib
    import json

    body = json.dumps(config, sort_keys=True, default=str)
    return json.dumps({
        "format": "medcli.experiment/1",
        "medcli_version": __version__,
        "config": config,
        "config_hash": "sha256:" + hashlib.sha256(body.encode()).hexdigest(),
        "cells": [c.__dict__ for c in grid.cells],
        "skipped": grid.skipped,
        "pretraining": config.get("pretrain"),
    }, sort_keys=True, default=str)


# --- the lock of a killed snakemake -------------------------------------------------------------------------------
# Snakemake locks the folder it runs in with files `.snakemake/locks/<n>.input.lock` / `<n>.output.lock` that name
# no process, so after a `kill -9` (or a lost login session) the next run stops with a LockException until
# `snakemake --unlock`. The workflow's `onstart` hook notes which process holds which lock files; the next run
# removes them when that process is gone (on this machine), and only then.

#: Snakemake's lock folder, relative to the folder snakemake runs in (Snakemake's layout, not medcli's).
SNAKEMAKE_LOCKS = Path(".snakemake") / "locks"
_OWNER_PREFIX = "medcli-owner-"


def _process_started(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        return -1.0  # alive, start unknown


def note_lock_owner(lock_files, locks: str | os.PathLike = SNAKEMAKE_LOCKS) -> Path | None:
    """Record that this process holds ``lock_files`` (the lock files Snakemake just wrote for it): host, pid and
    the process's start time, in ``<locks>/medcli-owner-<host>-<pid>.json``. Called from the workflow's ``onstart``
    hook (main process, lock held). Nothing is written without lock files. Snakemake deletes the folder, and so the
    note, when it unlocks. Returns the note's path."""
    from ._cleanup import host_name
    from ._io import write_json

    names = sorted(Path(f).name for f in lock_files)
    if not names:
        return None
    pid = os.getpid()
    note = Path(locks, f"{_OWNER_PREFIX}{host_name()}-{pid}.json")
    write_json(note, {"host": host_name(), "pid": pid, "started": _process_started(pid), "locks": names})
    return note


def clear_stale_lock(locks: str | os.PathLike = SNAKEMAKE_LOCKS) -> str | None:
    """Remove the lock files left by a snakemake that no longer runs; returns a one-line report, or None.

    Removed only when every lock file in ``locks`` is claimed by a note of :func:`note_lock_owner` whose process,
    on this machine, is gone (no process with that pid, or one started at another time: the pid was reused). Any
    unclaimed lock file, a note from another machine, an unreadable note or a live owner leaves everything as it
    is (Snakemake then refuses with its own message, which names ``--unlock``).
    """
    import json
    import re

    from ._cleanup import host_name

    locks = Path(locks)
    if not locks.is_dir():
        return None
    held = {p.name for p in locks.iterdir() if re.fullmatch(r"\d+\.(input|output)\.lock", p.name)}
    if not held:
        return None
    notes = sorted(locks.glob(f"{_OWNER_PREFIX}*.json"))
    claimed, owners = set(), []
    for note in notes:
        try:
            owner = json.loads(note.read_text())
            host, pid, started, names = owner["host"], int(owner["pid"]), owner["started"], owner["locks"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if host != host_name():
            return None
        now = _process_started(pid)
        if now is not None and (started is None or now < 0 or abs(now - float(started)) < 1.0):
            return None  # still running
        claimed.update(names)
        owners.append(owner)
    if not held <= claimed:
        return None
    for name in held:
        (locks / name).unlink(missing_ok=True)
    for note in notes:
        note.unlink(missing_ok=True)
    import time

    who = ", ".join(f"pid {o['pid']} started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(float(o['started'] or 0)))}"
                    for o in owners)
    return (f"removed the lock left by a snakemake that no longer runs ({who}); its unfinished jobs run again "
            f"(jobs it started may still run: see the README, \"When something goes wrong\")")
