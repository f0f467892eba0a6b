# Config validation, the experiment grid and every path pattern, all from medcli itself.

import os
import shlex
import sys

from medcli import paths
from medcli import workflow as grid_lib
from medcli.errors import MedcliError


def config_error(exc):
    """A config problem, found before any job runs: one `error:` line per problem on stderr, exit 1 (Snakemake
    would add the file, the line and a traceback)."""
    for line in str(exc).splitlines():
        print(f"error: {line}", file=sys.stderr)
    sys.exit(1)


# A snakemake killed with `kill -9` leaves its lock behind: removed here when its owner (noted by the onstart
# hook below) is gone. Jobs (other exec modes) never lock.
if workflow.is_main_process:
    STALE_LOCK = grid_lib.clear_stale_lock()
    if STALE_LOCK:
        logger.warning(STALE_LOCK)


onstart:
    grid_lib.note_lock_owner(getattr(workflow.persistence, "_lockfile", {}).values())


# Every config problem before the DAG: schema (with defaults filled in), registry names and, in the main process,
# the datasets' paths. Jobs parse the workflow again and skip what the main process checked.
try:
    config.update(grid_lib.check_config(config, os.path.join(workflow.basedir, "workflow", "schemas", "config.schema.yaml"),
                                        check_inputs=workflow.is_main_process))
    GRID = grid_lib.expand_grid(config)
    BATCHES = grid_lib.plan_batches(GRID, grid_lib.cells_per_job(config))
    GRADCAM_CELLS = grid_lib.gradcam_cells(config, GRID)
    # Training jobs inherit `track:` as medcli's MEDCLI_TRACK/MEDCLI_TRACK_DIR (every job's snakemake, on a cluster
    # too, parses this file), not through their settings: switching tracking on or off must not retrain anything.
    os.environ.update(grid_lib.tracking_env(config, config["logs"]))
except MedcliError as exc:
    config_error(exc)

RESULTS = config["results"]
WORK = config["work"]
LOGS = config["logs"]
CACHE = config["cache"]
RERUN = grid_lib.rerun_token(config)
SUMMARY = paths.summary_file(RESULTS)
RUN = paths.run_dir(RESULTS, "{dataset}", "{backbone}", "{strategy}", "{seed}", "{fold}")
RUN_NAME = paths.run_key("{backbone}", "{strategy}", "{seed}", "{fold}")
GPUS = int(config["resources"].get("gpus_per_job", 0))
ENSEMBLE = paths.ensemble_dir(RESULTS, "{dataset}", "{name}", "{method}", "{seed}")

for skipped in GRID.skipped:
    logger.info(f"skipping {skipped['dataset']}/{paths.run_name(skipped['backbone'], skipped['strategy'])}: {skipped['reason']}")

wildcard_constraints:
    dataset=r"[A-Za-z0-9][^/]*",  # "_pretrain" (the demo's pretraining runs) belongs to rule pretrain
    backbone=r"[^/]+?",
    strategy="|".join(sorted(config["strategies"])) or "-",
    seed=r"-?\d+",
    fold=r"\d+",
    split="test|val",


def resources_of(stage):
    """Per-stage resources from config['resources'], merged over its defaults."""
    res = dict(config["resources"]["default"])
    res.update(config["resources"].get(stage) or {})
    return res


def runtime(stage):
    base = int(resources_of(stage)["runtime"])
    return lambda wildcards, attempt: base * attempt


def mem_mb(stage):
    base = int(resources_of(stage)["mem_mb"])
    return lambda wildcards, attempt: base * attempt


def backbone_of(wildcards):
    """The backbone name of a `{backbone}` wildcard (folder names percent-encode `/` and `:` of Hub names)."""
    return paths.parse_backbone_dirname(wildcards.backbone)


def cell_run_dir(cell):
    """The run folder of a grid cell (medcli.workflow.Cell)."""
    return paths.run_dir(RESULTS, cell.dataset, cell.backbone, cell.strategy, cell.seed, cell.fold)


def run_dir(wildcards):
    return paths.run_dir(RESULTS, wildcards.dataset, backbone_of(wildcards), wildcards.strategy, wildcards.seed, wildcards.fold)


def dataset_input(wildcards):
    """A generated dataset (``synth:``) is made by the workflow; a user's dataset is just a path. ``wildcards``: a
    job's wildcards, or the dataset name itself."""
    dataset = wildcards if isinstance(wildcards, str) else wildcards.dataset
    if config["datasets"][dataset].get("synth"):
        return paths.synth_marker(grid_lib.dataset_path(config, dataset))
    return []


def cell_log(cell):
    """A training cell's own log (`medcli train --cell-logs` writes it there)."""
    return paths.cell_log_file(LOGS, cell.dataset, cell.backbone, cell.strategy, cell.seed, cell.fold)


# One process, or one per GPU (data parallel). torchrun --standalone rendezvouses on a free local port, so
# several jobs sharing a node never collide on a fixed port.
LAUNCH = "medcli" if GPUS <= 1 else f"python -m torch.distributed.run --standalone --nproc_per_node {GPUS} -m medcli"


def gpu_resources():
    """SLURM GPU request: the executor plugin reads `gpu` (+ `gpu_model`); it ignores `gpus`."""
    if GPUS <= 0:
        return {}
    res = {"gpu": GPUS}
    if config["resources"].get("gpu_model"):
        res["gpu_model"] = config["resources"]["gpu_model"]
    return res


def synth_args(dataset):
    spec = config["pretrain"]["synth"] if dataset == grid_lib.PRETRAIN_DATASET else config["datasets"][dataset]["synth"]
    return grid_lib.synth_args(spec)


def eval_args():
    spec = config.get("eval") or {}
    args = f"--bootstrap {int(spec.get('bootstrap', 1000))}"
    return args + (" --tta" if spec.get("tta") else "")


def eval_figures_args(batch):
    """`--figures-for RUN` for the batch's runs that get figures (config eval.figures), else `--no-figures`."""
    drawn = grid_lib.figure_cells(config, batch.cells)
    if len(drawn) == len(batch.cells):
        return ""
    if not drawn:
        return "--no-figures"
    runs = [cell_run_dir(c) for c in drawn]
    return " ".join(f"--figures-for {shlex.quote(run)}" for run in runs)


def all_runs(stage_file):
    return [stage_file(cell_run_dir(c)) for c in GRID.cells]


def ensemble_member_configs(dataset, name):
    """Configurations of an ensemble: its `members`, or every configuration of the grid for `all`."""
    spec = config["ensembles"][name]
    grid_configs = sorted({c.config_name for c in GRID.cells if c.dataset == dataset})
    members = spec.get("members", "all")
    return grid_configs if members == "all" else [m for m in members if m in grid_configs]


def ensemble_inputs(wildcards):
    return [
        paths.predictions_file(cell_run_dir(c), split)
        for c in GRID.cells
        if c.dataset == wildcards.dataset and str(c.seed) == wildcards.seed
        and c.config_name in ensemble_member_configs(wildcards.dataset, wildcards.name)
        for split in ("val", "test")
    ]


def ensemble_members_arg(wildcards):
    return " ".join(f"--members {m}" for m in ensemble_member_configs(wildcards.dataset, wildcards.name))


def eval_args_bootstrap():
    return int((config.get("eval") or {}).get("bootstrap", 1000))


def all_ensembles():
    return [
        paths.metrics_file(paths.ensemble_dir(RESULTS, d, name, method, seed), "test")
        for d in config["datasets"]
        for name, spec in (config.get("ensembles") or {}).items()
        if len(ensemble_member_configs(d, name)) >= 2
        for method in spec.get("methods", ["greedy"])
        for seed in config["seeds"]
    ]


def all_gradcam():
    split = (grid_lib.gradcam_settings(config) or {}).get("split", "test")
    return [
        paths.gradcam_index_file(cell_run_dir(c), split)
        for c in GRADCAM_CELLS
    ]


##### batches of grid cells (rules/train.smk, rules/eval.smk) #####

CELLS_AT_ONCE = grid_lib.cells_per_gpu(config)


def train_outputs(cell):
    return paths.training_outputs(cell_run_dir(cell))


def batch_weights(batch):
    """(input files, `weights` setting) of a batch: its cells share backbone and strategy, so their weights."""
    weights = batch.cells[0].weights
    if weights == "pretrained":
        model = paths.model_file(paths.run_dir(RESULTS, grid_lib.PRETRAIN_DATASET, batch.backbone, "scratch", 0, 0))
        return [model], model
    if weights == "imagenet":
        return [paths.weights_marker(WORK, batch.backbone)], weights
    return [], weights


def batch_texts(batch):
    """The `--config` and `--cells` texts of a batch job (medcli.workflow.batch_settings)."""
    _, weights = batch_weights(batch)
    return grid_lib.batch_settings([
        grid_lib.job_body(
            grid_lib.train_settings(config, cell), data=grid_lib.dataset_path(config, cell.dataset), name=cell.dataset,
            weights=weights, splits=paths.splits_file(RESULTS, cell.dataset), results=RESULTS, work=WORK, cache=CACHE,
            out=cell_run_dir(cell),
        )
        for cell in batch.cells
    ])


def batch_runtime(stage, batch, at_once):
    """Minutes: the stage's `runtime` per cell, for the cells one worker takes in turn, times the attempt."""
    per_cell = int(resources_of(stage)["runtime"])
    turns = -(-len(batch.cells) // at_once)
    return lambda wildcards, attempt: per_cell * turns * attempt


def batch_mem_mb():
    """`resources.train.mem_mb` per cell training at once, times the attempt."""
    per_cell = int(resources_of("train")["mem_mb"])
    return lambda wildcards, attempt: per_cell * CELLS_AT_ONCE * attempt


def eval_outputs(cell):
    run = cell_run_dir(cell)
    return [paths.predictions_file(run, "test"), paths.metrics_file(run, "test"), paths.metrics_file(run, "val")]
