"""The results layout: every path medcli reads or writes is built here, and only here.

Both the CLI and the Snakemake rules (``workflow/rules/common.smk``) import these functions, so a path template
is written once. Every function accepts plain strings, so calling it with Snakemake wildcards
(``splits_file("results", "{dataset}")``) yields the rule's pattern.

Layout (see docs/architecture.md for the file formats)::

    <results>/
      summary.md, summary.csv, summary.json, figures/
      <dataset>/
        inspect.json                                   medcli data inspect --json
        splits.json                                    medcli split
        runs/<backbone>__<strategy>/seed-<s>/fold-<k>/ one trained model (self-describing)
          config.json  history.csv  model.pt
          predictions/<split>.csv  metrics/<split>.json  figures/
          gradcam/<split>/index.json, gallery_<class>.png, <class>/{correct,wrong}/<image>.png
        ensembles/<name>__<method>/seed-<s>/          medcli ensemble (same files as a run + ensemble.json)
    <work>/<dataset>/<backbone>__<strategy>/seed-<s>/fold-<k>/checkpoint.pt
                                                       resume state; never a declared output
    <work>/<dataset>/<backbone>__<strategy>/seed-<s>/fold-<k>/settings.json
                                                       a workflow job's `medcli train --config` file
    <cache>/scan/, <cache>/store/<key>/                decoded-image caches (see medcli.data.store)
    <cache>/features/<key>/                             frozen-trunk features (see medcli.training.features)
    <logs>/<stage>/<dataset>/<name>.log                 workflow logs (and .benchmark.tsv beside them)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_RESULTS = "results"
DEFAULT_WORK = "work"
DEFAULT_LOGS = "logs"

INSPECT_FILE = "inspect.json"
SPLITS_FILE = "splits.json"
CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"
MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pt"
GRADCAM_INDEX = "index.json"


def _join(*parts: object) -> str:
    return os.path.join(*(str(p) for p in parts))


def summary_file(results: str | os.PathLike, ext: str = "md") -> str:
    """``summary.md`` (and its ``csv`` / ``json`` twins) at the top of the results."""
    return _join(results, f"summary.{ext}")


def summary_figures_dir(results: str | os.PathLike) -> str:
    return _join(results, "figures")


def synth_marker(data_dir: str | os.PathLike) -> str:
    """Written last by ``medcli data synth``: the generated dataset is complete (and how it was made)."""
    return _join(data_dir, "synth.json")


def weights_marker(work: str | os.PathLike, backbone: str) -> str:
    """Written by the workflow once a backbone's ImageNet weights are in the torch cache."""
    return _join(work, "weights", f"{backbone}.done")


def log_file(logs: str | os.PathLike, stage: str, dataset: str, name: str = "") -> str:
    return _join(logs, stage, dataset, f"{name or dataset}.log")


def benchmark_file(logs: str | os.PathLike, stage: str, dataset: str, name: str = "") -> str:
    return _join(logs, stage, dataset, f"{name or dataset}.benchmark.tsv")


def dataset_dir(results: str | os.PathLike, dataset: str) -> str:
    return _join(results, dataset)


def inspect_file(results: str | os.PathLike, dataset: str) -> str:
    return _join(results, dataset, INSPECT_FILE)


def splits_file(results: str | os.PathLike, dataset: str) -> str:
    return _join(results, dataset, SPLITS_FILE)


def run_name(backbone: str, strategy: str) -> str:
    """The configuration part of a run directory; ``__`` joins so that the name parses back."""
    return f"{backbone}__{strategy}"


def run_key(backbone: str, strategy: str, seed: object, fold: object) -> str:
    """``<backbone>__<strategy>/seed-<s>/fold-<k>``: a run's name below its dataset (run, work and log folders)."""
    return f"{run_name(backbone, strategy)}/seed-{seed}/fold-{fold}"


def run_dir(results: str | os.PathLike, dataset: str, backbone: str, strategy: str, seed: object, fold: object) -> str:
    return _join(results, dataset, "runs", run_key(backbone, strategy, seed, fold))


def work_dir(work: str | os.PathLike, dataset: str, backbone: str, strategy: str, seed: object, fold: object) -> str:
    """Where a run keeps its resume checkpoint: outside the declared outputs, so a killed job resumes."""
    return _join(work, dataset, run_key(backbone, strategy, seed, fold))


def cell_settings_file(work: str | os.PathLike, dataset: str, backbone: str, strategy: str, seed: object, fold: object) -> str:
    """The settings a workflow job hands to ``medcli train --config`` (beside the run's resume checkpoint)."""
    return _join(work_dir(work, dataset, backbone, strategy, seed, fold), "settings.json")


def ensemble_dir(results: str | os.PathLike, dataset: str, name: str, method: str, seed: object) -> str:
    """``<dataset>/ensembles/<name>__<method>/seed-<s>/``: same files as a run (predictions/, metrics/)."""
    return _join(results, dataset, "ensembles", f"{name}__{method}", f"seed-{seed}")


def ensemble_file(ens_dir: str | os.PathLike) -> str:
    return _join(ens_dir, "ensemble.json")


def experiment_file(results: str | os.PathLike) -> str:
    """The resolved workflow config and its grid (cells, skipped cells with reasons), for the report."""
    return _join(results, "experiment.json")


def config_file(run: str | os.PathLike) -> str:
    return _join(run, CONFIG_FILE)


def history_file(run: str | os.PathLike) -> str:
    return _join(run, HISTORY_FILE)


def model_file(run: str | os.PathLike) -> str:
    return _join(run, MODEL_FILE)


def predictions_file(run: str | os.PathLike, split: str) -> str:
    return _join(run, "predictions", f"{split}.csv")


def metrics_file(run: str | os.PathLike, split: str) -> str:
    return _join(run, "metrics", f"{split}.json")


def figures_dir(run: str | os.PathLike) -> str:
    return _join(run, "figures")


def gradcam_dir(run: str | os.PathLike, split: str) -> str:
    """``<run>/gradcam/<split>/``: the overlays, per-class galleries and ``index.json`` of ``medcli gradcam``."""
    return _join(run, "gradcam", split)


def gradcam_index_file(run: str | os.PathLike, split: str) -> str:
    """``index.json`` (format ``medcli.gradcam/1``): what was explained, the galleries and the faithfulness."""
    return _join(gradcam_dir(run, split), GRADCAM_INDEX)


def checkpoint_file(work_run: str | os.PathLike) -> str:
    return _join(work_run, CHECKPOINT_FILE)


def features_dir(cache: str | os.PathLike, key: str) -> str:
    """One feature cache: a frozen trunk's outputs for the images of a dataset's folds (``features.npy``, ``meta.json``)."""
    return _join(cache, "features", key)


def default_cache_dir() -> Path:
    """``$MEDCLI_CACHE``, else ``$XDG_CACHE_HOME/medcli``, else ``~/.cache/medcli``."""
    if os.environ.get("MEDCLI_CACHE"):
        return Path(os.environ["MEDCLI_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "medcli"


@dataclass(frozen=True)
class RunKey:
    """The coordinates of one trained model, as parsed back from its directory."""

    dataset: str
    backbone: str
    strategy: str
    seed: int
    fold: int


_RUN_RE = re.compile(
    r"(?P<dataset>[^/]+)/runs/(?P<backbone>[^/]+?)__(?P<strategy>[^/]+)/seed-(?P<seed>-?\d+)/fold-(?P<fold>\d+)/?$"
)


def parse_run_dir(path: str | os.PathLike) -> RunKey:
    """Inverse of :func:`run_dir` (the results root is ignored)."""
    m = _RUN_RE.search(Path(path).as_posix())
    if not m:
        raise ValueError(f"{path} is not a run directory (<dataset>/runs/{run_key('<backbone>', '<strategy>', '<s>', '<k>')})")
    return RunKey(m["dataset"], m["backbone"], m["strategy"], int(m["seed"]), int(m["fold"]))
