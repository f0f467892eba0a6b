"""Every setting of one training run, declared once.

:class:`TrainConfig` is the schema: each field carries its type, default, allowed values, bounds, help text,
group and where the workflow sets it (``Setting`` metadata). Everything else is derived from it:

- ``medcli train`` generates one command-line option per field (``medcli/cli/train.py``);
- ``medcli train --config FILE`` reads any subset of the fields from YAML or JSON (:func:`read_settings`),
  including the ``config`` section of a run's ``config.json``, so a run can be re-run from its own record;
- the workflow writes each grid cell's settings to a file that ``medcli train --config`` reads, and the
  ``train:`` part of ``workflow/schemas/config.schema.yaml`` is :func:`workflow_schema` (a test fails when
  they drift; ``python -m medcli.training.config`` prints the block).

Values from a file, the workflow or Python are checked by :func:`from_dict` / :func:`validate` (type, allowed
values, bounds); :func:`resolve` fills in what depends on other settings (the backbone's image size, the
default weights and augmentation of a strategy, the output folders). The resolved config is written to
``config.json`` in the run folder together with versions and fingerprints.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import json
import math
import os
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..errors import MedcliError
from ..paths import DEFAULT_RESULTS, DEFAULT_WORK
from .tracking import check_available, tracker_names

OPTIMIZERS = ("adamw", "adam", "sgd")
# Validation metric -> direction. auc: ROC AUC, macro one-vs-rest over the classes present (the MedMNIST evaluator's);
# last: no selection, the weights after the last epoch (no early stopping; what MedMNIST v2's published code kept).
MONITORS = {"auc": "max", "balanced_accuracy": "max", "accuracy": "max", "macro_f1": "max", "loss": "min", "last": "max"}
SCHEDULES = ("cosine", "step", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LAYOUTS = ("auto", "imagefolder", "presplit", "csv", "npz")
RESIZE_MODES = ("squash", "pad", "crop")

# Groups, in the order ``medcli train --help`` shows them.
DATA, MODEL, OPTIMISATION, AUGMENTATION, RUN = "Data", "Model", "Optimisation", "Augmentation", "Run"

# Where the workflow sets a field (``Setting.workflow``):
#   "train"    a ``train:`` section (global, dataset, backbone, strategy, pretrain), one of the cell's settings;
#   "dataset"  a key of ``datasets.<name>`` (layout, aliases, skip_bad);
#   "grid"     the grid itself: dataset, backbone, strategy, seed, fold, weights (``weights:`` / ``backbones.<b>.weights``);
#   "job"      the job's own paths and resources (splits file, run folder, work, cache, workers, progress).
WORKFLOW_SCOPES = ("train", "dataset", "grid", "job")


@dataclass(frozen=True)
class Setting:
    """What the schema says about one field beyond its name, type and default."""

    help: str
    group: str
    workflow: str = "train"
    choices: tuple | None = None
    minimum: float | None = None
    exclusive_minimum: float | None = None
    exclusive_maximum: float | None = None
    maximum: float | None = None
    option: str | None = None  # the command-line option when it is not --<name-with-dashes>
    short: str | None = None  # a one-letter alias (-b)
    default_text: str | None = None  # the help's "(default: …)" when the default depends on other settings
    in_key: bool = True  # part of TrainConfig.key(): changes what is computed
    env: str | None = None  # an environment variable that sets it when neither an option nor a --config file does


def setting(default: Any, help: str, group: str, **kw) -> Any:
    meta = {"setting": Setting(help, group, **kw)}
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    recipe: str = setting("default", "A named group of settings (see `medcli recipes` and docs/recipes.md): default (the defaults "
                          "study's result), medmnist-v2 (the MedMNIST v2 paper's protocol) or quick (a smoke run). Options given "
                          "explicitly override it.", RUN)
    # data
    data: str = setting("", "Dataset folder, .csv manifest or .npz file.", DATA, workflow="grid",
                        default_text="required, on the command line or in --config")
    dataset_name: str | None = setting(None, "Dataset name in the results layout.", DATA, workflow="grid", option="--name",
                                       default_text="the data folder's or file's name")
    layout: str = setting("auto", "How the dataset is laid out.", DATA, workflow="dataset", choices=LAYOUTS)
    aliases: dict[str, str] = setting({}, "Rename a class: RAW=CLASS (repeatable). Applied before automatic matching.", DATA,
                                      workflow="dataset", option="--alias", default_text="none")
    splits: str | None = setting(None, "splits.json from `medcli split`.", DATA, workflow="job",
                                 default_text="results/<dataset>/splits.json, made from the dataset's own train/val split if missing")
    fold: int = setting(0, "Which fold of the splits to train.", DATA, workflow="grid", minimum=0)
    skip_bad: bool = setting(False, "When splits are made here: leave unreadable files out.", DATA, workflow="dataset")
    group_by: str | None = setting(None, "Keep each DICOM patient or study in one fold and out of the test split (identifiers "
                                   "are stored as salted hashes only); recorded in splits.json, which medcli train reads back.", DATA,
                                   workflow="dataset", choices=("patient", "study"),
                                   default_text="the splits file's, else the manifest's group column")
    allow_missing_classes: bool = setting(False, "Accept a fold whose validation part (or a test holdout) lacks a class when "
                                          "splits are made, recorded in splits.json (its scores are biased; refused by "
                                          "default). A training part without a class is always refused.", DATA, workflow="dataset")
    window: str | None = setting(None, "DICOM window: a preset (lung, mediastinum, soft-tissue, bone, brain, liver) or "
                                 "CENTRE,WIDTH in modality units (Hounsfield units for CT).", DATA, workflow="dataset",
                                 default_text="the file's own VOI LUT or window, else its full range")
    frame: int | None = setting(None, "Frame of multi-frame files (DICOM, TIFF pages, GIF/WebP frames), 0-based.", DATA,
                                workflow="dataset", minimum=0, default_text="multi-frame files are refused")
    img_size: int | None = setting(None, "Input size in pixels.", DATA, minimum=8, default_text="the backbone's")
    channels: int = setting(3, "Input channels: 1 (grayscale) or 3 (RGB).", DATA, choices=(1, 3))
    resize: str = setting("squash", "How images are brought to the input size.", DATA, choices=RESIZE_MODES)
    # model
    backbone: str = setting("resnet18", "customcnn, a torchvision model name, a timm model name with its pretrained tag "
                            "(convnext_tiny.fb_in22k) or a Hub name (hf-hub:ORG/NAME); see `medcli models`.", MODEL,
                            workflow="grid", short="-b")
    head: str = setting("linear", "Classification head: linear or mlp.", MODEL)
    strategy: str = setting("full", "Transfer-learning strategy: scratch, linear, partial, full or two-phase.", MODEL, workflow="grid", short="-s")
    weights: str | None = setting(None, "imagenet (or pretrained: the model's pretrained weights), none, or a weights file "
                                  "(.safetensors, .pth, a medcli model.pt).", MODEL, workflow="grid", short="-w",
                                  default_text="imagenet; none for scratch and customcnn")
    dropout: float = setting(0.5, "Dropout of the mlp head.", MODEL, minimum=0, exclusive_maximum=1)
    hidden: int = setting(256, "Hidden units of the mlp head.", MODEL, minimum=1)
    # strategy parameters
    partial_stages: int = setting(1, "partial: how many of the last backbone stages train.", MODEL, minimum=1)
    freeze_epochs: int = setting(1, "two-phase: epochs of head-only training.", MODEL, minimum=1)
    lr_mult: float = setting(100.0, "two-phase: head lr / first stage lr.", MODEL, minimum=1)
    layer_decay: float | None = setting(None, "full and two-phase: layer-wise learning-rate decay, each stage's lr = the next "
                                        "stage's × this factor (BEiT/timm fine-tuning; e.g. 0.75).", MODEL,
                                        exclusive_minimum=0, maximum=1, default_text="off")
    # optimisation
    epochs: int | None = setting(None, "Maximum number of epochs.", OPTIMISATION, minimum=1, short="-e",
                                 default_text="enough for about 2,000 optimizer steps at the folds' mean training size, 30 to 100")
    batch_size: int = setting(32, "Global batch size (split over processes).", OPTIMISATION, minimum=1)
    optimizer: str = setting("adamw", "Optimizer: adamw (decoupled weight decay), adam (L2 weight decay, as the MedMNIST v2 "
                             "protocol) or sgd (Nesterov).", OPTIMISATION, choices=OPTIMIZERS)
    lr: float = setting(1e-3, "Peak learning rate.", OPTIMISATION, exclusive_minimum=0)
    weight_decay: float = setting(1e-4, "Weight decay.", OPTIMISATION, minimum=0)
    momentum: float = setting(0.9, "Momentum of sgd.", OPTIMISATION, minimum=0, exclusive_maximum=1)
    warmup_epochs: float = setting(1.0, "Linear warm-up at the start of each strategy phase, in epochs.", OPTIMISATION, minimum=0)
    schedule: str = setting("cosine", "Learning-rate schedule after the warm-up of each phase: cosine decay to min_lr_ratio, step "
                            "(x0.1 at 50% and 75% of the phase, as the MedMNIST v2 and ResNet protocols) or constant.", OPTIMISATION,
                            choices=SCHEDULES)
    min_lr_ratio: float = setting(0.01, "Final learning rate of the cosine schedule, as a fraction of the peak.", OPTIMISATION,
                                  minimum=0, maximum=1)
    class_weights: bool = setting(True, "Class-weighted cross-entropy (weights from the training fold).", OPTIMISATION)
    label_smoothing: float = setting(0.0, "Label smoothing of the cross-entropy.", OPTIMISATION, minimum=0, exclusive_maximum=1)
    monitor: str = setting("auc", "Early-stopping (and best-epoch) metric on the validation fold; auc is the ROC AUC, macro "
                           "one-vs-rest for more than two classes; last keeps the weights of the last epoch (no selection, "
                           "no early stopping).", OPTIMISATION, choices=tuple(MONITORS))
    patience: int | None = setting(None, "Epochs without improvement before stopping.", OPTIMISATION, minimum=1,
                                   default_text="a quarter of the epochs, at least 10")
    ema_epochs: float = setting(2.0, "Exponential moving average of the weights (timm's ModelEmaV3, with its warm-up), over about "
                                "this many epochs of optimizer steps; the averaged weights are validated, selected and saved "
                                "(0: off).", OPTIMISATION, minimum=0)
    # augmentation (None: off for strategy linear, whose frozen features are then computed once; on otherwise)
    augment: bool | None = setting(None, "Random flips, rotations, zooms and shifts.", AUGMENTATION,
                                   default_text="on; off for strategy linear, which then trains its head on frozen-trunk features computed once")
    hflip: bool = setting(True, "Random horizontal flips (switch off where laterality matters).", AUGMENTATION)
    rotate: float = setting(10.0, "Max rotation in degrees.", AUGMENTATION, minimum=0)
    zoom: float = setting(0.1, "Max zoom in/out (fraction).", AUGMENTATION, minimum=0)
    shift: float = setting(0.1, "Max shift (fraction of the side).", AUGMENTATION, minimum=0)
    # reproducibility and hardware
    seed: int = setting(0, "Seed of initialisation, shuffling, augmentation and dropout.", RUN, workflow="grid")
    precision: str = setting("auto", "auto (bf16 on GPUs that support it, else fp32), fp32, bf16 or fp16.", RUN, choices=PRECISIONS)
    channels_last: bool | None = setting(None, "channels_last memory format (faster convolutions on CUDA and CPU).", RUN, default_text="on")
    compile: bool = setting(False, "torch.compile the model (worth it for long GPU runs; the first steps compile).", RUN)
    checkpoint_every: float = setting(60.0, "Seconds between resume checkpoints in the work folder (0: after every epoch); "
                                      "a kill loses at most this much.", RUN, minimum=0, in_key=False)
    feature_cache: bool = setting(True, "linear without augmentation: compute the frozen trunk's features once, cache them and "
                                  "train the head on them (off: forward every batch through the trunk).", RUN, in_key=False)
    # where things go
    results: str = setting(DEFAULT_RESULTS, "Results root.", RUN, workflow="job", in_key=False)
    work: str = setting(DEFAULT_WORK, "Where resume checkpoints live.", RUN, workflow="job", in_key=False)
    out: str | None = setting(None, "Run folder.", RUN, workflow="job", short="-o", in_key=False,
                              default_text="results/<dataset>/runs/<backbone>__<strategy>/seed-<s>/fold-<k>")
    cache_dir: str | None = setting(None, "Where decoded-image caches live.", RUN, workflow="job", in_key=False,
                                    default_text="$MEDCLI_CACHE or ~/.cache/medcli")
    workers: int | None = setting(None, "Decoding processes.", RUN, workflow="job", minimum=1, in_key=False,
                                  default_text="the CPUs available")
    progress: bool = setting(True, "A progress bar on a terminal.", RUN, workflow="job", in_key=False)
    track: str = setting("none", "Track the run's epochs, settings and best scores: tensorboard (event files, local) or mlflow "
                         "(one run per cell, tagged dataset, backbone, strategy, seed, fold; needs the mlflow extra of medcli).", RUN,
                         workflow="job", choices=tracker_names(), in_key=False, env="MEDCLI_TRACK")
    track_dir: str | None = setting(None, "Where tracking writes: TensorBoard's log folder, or MLflow's local store.", RUN,
                                    workflow="job", in_key=False, env="MEDCLI_TRACK_DIR",
                                    default_text="logs/tensorboard; mlflow: $MLFLOW_TRACKING_URI, else mlruns")
    # Not a setting: the names of the settings given explicitly, set by from_dict (None: built directly in Python).
    # The recipe applies under them; config.json's `resolved` gives the reason of every value not among them.
    given: frozenset | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict:
        """The settings (every schema field), as ``config.json`` records them."""
        return {name: getattr(self, name) for name in _SCHEMA}

    def key(self) -> str:
        """Hash of everything that changes the result: a checkpoint is resumed only under the same key."""
        relevant = {k: v for k, v in self.to_dict().items() if k in KEY_FIELDS}
        return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


_SCHEMA: dict[str, Setting] = {f.name: f.metadata["setting"] for f in fields(TrainConfig) if "setting" in f.metadata}
KEY_FIELDS = frozenset(name for name, s in _SCHEMA.items() if s.in_key)


def schema() -> dict[str, Setting]:
    """``{field name: Setting}`` in declaration order."""
    return dict(_SCHEMA)


def default_of(name: str) -> Any:
    f = _FIELDS[name]
    return f.default_factory() if f.default is MISSING else f.default


_FIELDS = {f.name: f for f in fields(TrainConfig) if f.name in _SCHEMA}
# The Python type of each field and whether it may be None, from its annotation ("int | None", "dict[str, str]").
_TYPES = {name: (f.type.split(" | ")[0].split("[")[0], "None" in f.type) for name, f in _FIELDS.items()}


def kind_of(name: str) -> str:
    """The Python type of setting ``name``: ``str``, ``int``, ``float``, ``bool`` or ``dict``."""
    return _TYPES[name][0]


def option_name(name: str) -> str:
    """The command-line option of a field (``batch_size`` → ``--batch-size``; ``dataset_name`` → ``--name``)."""
    return _SCHEMA[name].option or "--" + name.replace("_", "-")


# --- checking values ------------------------------------------------------------------------------------------


def check_value(name: str, value: Any, where: str = "") -> Any:
    """The value of setting ``name`` as the schema wants it (ints given for floats become floats).

    ``where`` names the source in the error (``--lr``, ``cell.yaml: lr``). Raises :class:`MedcliError` with one
    line naming the setting, the value and what is allowed.
    """
    label = where or name
    kind, optional = _TYPES[name]
    s = _SCHEMA[name]
    if value is None:
        if optional:
            return None
        raise MedcliError(f"{label}: null is not allowed; give a {_describe(kind)}")
    value = _coerce(kind, value, label)
    if s.choices is not None and value not in s.choices:
        raise MedcliError(f"{label} {value!r}: choose one of {', '.join(map(str, s.choices))}")
    if kind in ("int", "float"):
        _check_bounds(s, value, label)
    if name in _VALIDATORS:
        _VALIDATORS[name](value, label)
    return value


def _check_window(value: str, label: str) -> None:
    from ..data.dicom import parse_window

    try:
        parse_window(value)
    except ValueError as exc:
        raise MedcliError(f"{label} {value!r}: {str(exc).split(': ', 1)[-1]}") from None


def _check_recipe(value: str, label: str) -> None:
    from .recipes import get_recipe

    try:
        get_recipe(value)
    except MedcliError as exc:
        raise MedcliError(f"{label}: {exc}") from None


_VALIDATORS = {"window": _check_window, "recipe": _check_recipe}


_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _coerce(kind: str, value: Any, label: str) -> Any:
    if kind == "float" and isinstance(value, str) and _NUMBER.match(value.strip()):
        value = float(value)  # YAML 1.1 (PyYAML) reads 1e-3, without a dot, as a string
    ok = {
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "str": isinstance(value, (str, os.PathLike)),
        "dict": isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()),
    }[kind]
    if not ok:
        raise MedcliError(f"{label} {value!r}: expected {_describe(kind)}, got {type(value).__name__}")
    if kind == "str":
        return os.fspath(value)
    if kind == "float":
        value = float(value)
        if not math.isfinite(value):
            raise MedcliError(f"{label} {value!r}: expected a finite number")
    return dict(value) if kind == "dict" else value


def _describe(kind: str) -> str:
    return {"bool": "true or false", "int": "a whole number", "float": "a number", "str": "a string",
            "dict": "a mapping of RAW: CLASS names, all strings"}[kind]


def _check_bounds(s: Setting, value: float, label: str) -> None:
    if s.minimum is not None and value < s.minimum:
        raise MedcliError(f"{label} {value}: must be at least {s.minimum:g}")
    if s.exclusive_minimum is not None and value <= s.exclusive_minimum:
        raise MedcliError(f"{label} {value}: must be greater than {s.exclusive_minimum:g}")
    if s.maximum is not None and value > s.maximum:
        raise MedcliError(f"{label} {value}: must be at most {s.maximum:g}")
    if s.exclusive_maximum is not None and value >= s.exclusive_maximum:
        raise MedcliError(f"{label} {value}: must be less than {s.exclusive_maximum:g}")


def check_keys(values: dict, where: str = "") -> None:
    """Refuse unknown setting names, suggesting the closest known ones."""
    for key in values:
        if key not in _FIELDS:
            close = difflib.get_close_matches(str(key), list(_FIELDS), n=3)
            hint = f"did you mean {', '.join(close)}?" if close else f"known settings: {', '.join(_FIELDS)}"
            raise MedcliError(f"{where}unknown training setting {key!r}; {hint}")


def from_dict(values: dict, where: str = "") -> TrainConfig:
    """A :class:`TrainConfig` from ``{setting: value}`` (any subset), every value checked against the schema, on
    top of the recipe it names (``recipe``, default ``default``; :func:`medcli.training.recipes.apply_recipe`):
    the values given win over the recipe's, which win over the schema defaults.

    ``where`` (e.g. ``"cell.yaml: "``) prefixes each error. Raises :class:`MedcliError` for unknown keys, wrong
    types, values outside the allowed set, out-of-range numbers and an unknown recipe.
    """
    from .recipes import apply_recipe

    check_keys(values, where)
    checked = {k: check_value(k, v, f"{where}{k}") for k, v in values.items()}
    return TrainConfig(**apply_recipe(checked), given=frozenset(checked))


def validate(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` (made in Python, perhaps) with every field checked against the schema; errors name the option.

    Paths given as ``os.PathLike`` become strings and whole numbers given for floats become floats.
    """
    return replace(cfg, **{name: check_value(name, getattr(cfg, name), option_name(name)) for name in _SCHEMA})


def settings_from_env(environ=None) -> dict:
    """``{setting: value}`` for the settings whose environment variable (``Setting.env``, e.g. ``MEDCLI_TRACK``) is
    set and not empty, each checked; they rank under a ``--config`` file and the options. (The workflow passes
    its ``track:`` key this way, so switching tracking never changes a job's settings, its rerun trigger.)"""
    environ = os.environ if environ is None else environ
    return {name: check_value(name, environ[s.env], s.env) for name, s in _SCHEMA.items() if s.env and environ.get(s.env)}


def read_settings(path: str | os.PathLike) -> dict:
    """Settings from a YAML or JSON file: ``{setting: value}``, or a run's ``config.json`` (its ``config`` section).

    Keys and values are checked (:func:`from_dict` rules). Raises :class:`MedcliError` naming the file when it
    is missing, unreadable, not a mapping, or holds an unknown key or a bad value.
    """
    return settings_of(_read_document(path), f"{path}: ")


def read_cells(path: str | os.PathLike) -> list[dict]:
    """The cells of a ``medcli train --cells`` file: a YAML or JSON list whose entries are what a ``--config`` file
    holds (``{setting: value}``, or a run's ``config.json``), one ``{setting: value}`` per cell.

    Raises :class:`MedcliError` naming the file (and the 1-based cell) when it is missing, unreadable, not a
    non-empty list, or an entry is not a mapping or holds an unknown key or a bad value.
    """
    doc = _read_document(path)
    if not isinstance(doc, list) or not doc:
        raise MedcliError(f"{path}: expected a non-empty list of cells (each a mapping of training settings), got "
                          f"{'an empty list' if doc == [] else type(doc).__name__}")
    return [settings_of(entry, f"{path}: cell {k + 1}: ") for k, entry in enumerate(doc)]


def _read_document(path: str | os.PathLike):
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise MedcliError(f"{path}: cannot read the settings file ({exc.strerror or exc})") from None
    try:
        return yaml.safe_load(text)  # YAML is a superset of JSON
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "syntax error"
        raise MedcliError(f"{path}: not valid YAML or JSON ({first})") from None


def settings_of(doc, where: str = "") -> dict:
    """``{setting: value}`` from one parsed settings document (a mapping, a run's ``config.json`` or None), checked;
    ``where`` prefixes each error."""
    if isinstance(doc, dict) and str(doc.get("format", "")).startswith("medcli.run/"):
        doc = run_settings(doc)
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise MedcliError(f"{where}expected a mapping of training settings (setting: value), got {type(doc).__name__}")
    check_keys(doc, where)
    values = {k: check_value(k, v, f"{where}{k}") for k, v in doc.items()}
    check_names(values, where)
    return values


# Settings added after runs were first recorded, with the value that reproduces what those runs did.
BEFORE_RECIPES = {"ema_epochs": 0.0, "schedule": "cosine", "optimizer": "adamw"}


def run_settings(doc: dict) -> dict | None:
    """The settings that re-run a run from its ``config.json`` (``doc``): its ``config`` section without the values
    its recipe set or the data decided (``resolved``), which are derived again the same way (so ``--recipe`` or
    other data given on top apply as they would have). A run recorded before recipes existed (no ``recipe`` key)
    gets :data:`BEFORE_RECIPES` for the settings it does not record, not today's defaults."""
    config = doc.get("config")
    if not isinstance(config, dict):
        return config
    settings = {k: v for k, v in config.items() if k not in (doc.get("resolved") or {})}
    if "recipe" not in config:
        settings = {**BEFORE_RECIPES, **settings}
    return settings


def check_names(values: dict, where: str = "") -> None:
    """Check the registry names among ``values`` (backbone, head, strategy), so that an error names its source."""
    from ..models import get_backbone, get_head
    from ..strategies import get_strategy

    for key, get in (("backbone", get_backbone), ("head", get_head), ("strategy", get_strategy)):
        if values.get(key) is not None:
            try:
                get(values[key])
            except MedcliError as exc:
                raise MedcliError(f"{where}{key}: {exc}") from None


# --- resolving --------------------------------------------------------------------------------------------------


def resolve(cfg: TrainConfig) -> TrainConfig:
    """Fill in derived settings and check the combination; raises :class:`MedcliError` when it cannot work."""
    from .. import paths
    from ..models import get_backbone, get_head
    from ..strategies import check_combination, combination_note, get_strategy

    if not cfg.data:
        raise MedcliError("no dataset given: pass --data PATH")
    cfg = validate(cfg)
    _check_recipe_applied(cfg)
    check_available(cfg.track)  # before any work: a missing tracker package is a one-line error, not a late crash
    info = get_backbone(cfg.backbone)
    get_head(cfg.head)
    get_strategy(cfg.strategy)
    weights = "imagenet" if cfg.weights == "pretrained" else cfg.weights  # timm's word for a model's pretrained weights
    if weights is None:
        weights = "none" if cfg.strategy == "scratch" or info.imagenet_weights is None else "imagenet"
    if weights not in ("none", "imagenet"):
        weights = str(Path(weights).expanduser().resolve())
        if not Path(weights).is_file():
            raise MedcliError(f"--weights {cfg.weights}: file not found (use imagenet, none or a weights file)")
    check_combination(cfg.backbone, cfg.strategy, None if weights == "none" else weights, layer_decay=cfg.layer_decay)
    from ..data.decode import DecodeOptions

    DecodeOptions(window=cfg.window, frame=cfg.frame).validate()
    note = combination_note(cfg.backbone, cfg.strategy, None if weights == "none" else weights)
    if note:
        import logging

        logging.getLogger("medcli").warning(note)
    name = cfg.dataset_name or paths.dataset_name(cfg.data)
    cfg = _with_split_settings(cfg, cfg.splits or paths.splits_file(cfg.results, name))
    img_size = cfg.img_size or info.input_size
    out = cfg.out or paths.run_dir(cfg.results, name, cfg.backbone, cfg.strategy, cfg.seed, cfg.fold)
    augment = default_augment(cfg.strategy) if cfg.augment is None else bool(cfg.augment)
    return replace(cfg, dataset_name=name, weights=weights, img_size=img_size, out=str(out), augment=augment)


def resolve_quietly(cfg: TrainConfig) -> TrainConfig:
    """:func:`resolve` without its log warnings, for checks made before training, which resolves the settings again
    and warns once."""
    import logging

    log = logging.getLogger("medcli")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        return resolve(cfg)
    finally:
        log.setLevel(level)


def _check_recipe_applied(cfg: TrainConfig) -> None:
    """Refuse a ``TrainConfig(recipe=NAME)`` built directly in Python: nothing applied the recipe, and which of its
    values were meant to override it is unknown. :func:`from_dict` applies it (and records ``given``)."""
    from .recipes import get_recipe

    if cfg.given is None and get_recipe(cfg.recipe).settings:
        raise MedcliError(f"recipe {cfg.recipe!r} was named in a TrainConfig built directly, so it was not applied: build the "
                          f"settings with medcli.training.config.from_dict({{'recipe': {cfg.recipe!r}, ...}})")


# Budget defaults, from the defaults study (docs/recipes.md).
STEP_BUDGET = 2000  # optimizer steps the default number of epochs aims at
MIN_EPOCHS, MAX_EPOCHS = 30, 100
MIN_PATIENCE, PATIENCE_FRACTION = 10, 0.25


def resolve_budget(cfg: TrainConfig, n_train: int) -> tuple[TrainConfig, dict]:
    """``cfg`` with ``epochs`` and ``patience`` filled in when not given, and ``{setting: {"value", "reason"}}``
    for each value that was derived here or set by the recipe (what ``config.json`` records as ``resolved``).

    * ``epochs``: enough epochs for about :data:`STEP_BUDGET` optimizer steps at ``n_train`` training images
      (``n_train // batch_size`` steps per epoch), clipped to [:data:`MIN_EPOCHS`, :data:`MAX_EPOCHS`]: a small
      dataset gets more passes, a large one no fewer than before the study. :func:`medcli.training.train` passes
      the mean training-part size over the folds of the splits, so every fold of a configuration gets the same
      number of epochs.
    * ``patience``: :data:`PATIENCE_FRACTION` of the epochs, at least :data:`MIN_PATIENCE`.
    """
    from .recipes import recipe_reasons

    reasons = {k: {"value": getattr(cfg, k), "reason": why} for k, why in recipe_reasons(cfg).items()}
    changes = {}
    if cfg.epochs is None:
        steps = max(1, n_train // max(1, min(cfg.batch_size, n_train)))
        epochs = min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(STEP_BUDGET / steps)))
        changes["epochs"] = epochs
        reasons["epochs"] = {"value": epochs, "reason": f"{n_train} training images per fold at batch {cfg.batch_size}: {steps} steps "
                             f"per epoch; about {STEP_BUDGET} steps, {MIN_EPOCHS}..{MAX_EPOCHS} epochs"}
    epochs = changes.get("epochs", cfg.epochs)
    if cfg.patience is None:
        patience = max(MIN_PATIENCE, math.ceil(PATIENCE_FRACTION * epochs))
        changes["patience"] = patience
        reasons["patience"] = {"value": patience, "reason": f"{PATIENCE_FRACTION:g} of {epochs} epochs, at least {MIN_PATIENCE}"}
    return (replace(cfg, **changes) if changes else cfg), reasons


def _with_split_settings(cfg: TrainConfig, splits_file: str) -> TrainConfig:
    """``cfg`` with the dataset-reading settings an existing splits file was made with (``group_by``, ``window``,
    ``frame``): the dataset must be read as it was split. A different value given explicitly is refused."""
    try:
        with open(splits_file) as fh:
            settings = json.load(fh).get("settings") or {}
    except (OSError, ValueError, AttributeError):
        return cfg  # no or unreadable splits file: made here, or load_splits reports it
    recorded = {"group_by": settings.get("group_by"), **(settings.get("decode") or {})}
    changes = {}
    for key in ("group_by", "window", "frame"):
        mine, theirs = getattr(cfg, key), recorded.get(key)
        if theirs is None:
            continue
        if mine is not None and mine != theirs:
            raise MedcliError(f"{option_name(key)} {mine!r}: {splits_file} was made with {theirs!r}; train with the same value "
                              f"(or leave it out), or make new splits with `medcli split {option_name(key)} {mine}`")
        changes[key] = theirs
    return replace(cfg, **changes) if changes else cfg


def default_augment(strategy: str) -> bool:
    """Augmentation when ``--augment/--no-augment`` is not given: off for ``linear``, on for the others.

    A linear probe trains one layer on a frozen trunk's outputs; as in eva's and CLIP's linear evaluation it
    sees each image's features as they are, and without augmentation those features are computed once and
    cached (see :mod:`medcli.training.features`). The other strategies train the trunk, which augmentation
    regularizes. The resolved value is what ``config.json`` records.
    """
    return strategy != "linear"


def splits_file(cfg: TrainConfig) -> str:
    """The splits file a resolved ``cfg`` reads: ``--splits``, else ``<results>/<dataset>/splits.json``."""
    from .. import paths

    return cfg.splits or paths.splits_file(cfg.results, cfg.dataset_name)


def work_dir(cfg: TrainConfig) -> str:
    """Where the resume checkpoint lives: outside the run folder (never a declared workflow output).

    Runs with the same coordinates share the folder; the checkpoint carries :meth:`TrainConfig.key`, so only
    a run that would compute exactly the same thing resumes from it.
    """
    from .. import paths

    return paths.work_dir(cfg.work, cfg.dataset_name, cfg.backbone, cfg.strategy, cfg.seed, cfg.fold)


# --- the workflow's view ------------------------------------------------------------------------------------------


def workflow_schema() -> dict:
    """JSON-schema properties of the settings a workflow ``train:`` section may hold (``Setting.workflow == "train"``).

    ``workflow/schemas/config.schema.yaml`` holds exactly this under ``$defs.train.properties`` (plus the
    workflow's own ``weights`` key); ``tests/test_settings.py`` fails when the two drift.
    """
    json_type = {"bool": "boolean", "int": "integer", "float": "number", "str": "string", "dict": "object"}
    props: dict[str, dict] = {}
    for name, s in schema().items():
        if s.workflow != "train":
            continue
        kind, _ = _TYPES[name]
        prop: dict[str, Any] = {"type": json_type[kind]}
        if s.choices is not None:
            prop["enum"] = list(s.choices)
        for key, value in (("minimum", s.minimum), ("exclusiveMinimum", s.exclusive_minimum),
                           ("maximum", s.maximum), ("exclusiveMaximum", s.exclusive_maximum)):
            if value is not None:
                prop[key] = value
        prop["description"] = s.help
        props[name] = prop
    return props


if __name__ == "__main__":  # python -m medcli.training.config: the schema block for config.schema.yaml
    import yaml

    print(yaml.safe_dump({"properties": workflow_schema()}, sort_keys=False, width=200, allow_unicode=True))
