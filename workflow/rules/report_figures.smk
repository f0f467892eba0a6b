# The files `snakemake --report` shows beyond the summary, with their category (dataset), sub-category
# (configuration), labels (the columns of the report's table) and caption (workflow/report/*.rst). Functions
# only: eval.smk and report.smk flag their outputs and inputs with them.

from medcli._io import read_json

# Captions of files listed by an input function are not resolved against this folder by Snakemake: resolved here.
GRADCAM_CAPTION = workflow.current_basedir.join("../report/gradcam.rst")


REPORT_FIGURE_NAMES = {"confusion": "confusion matrix", "roc": "ROC curves", "pr": "precision-recall curves",
                       "reliability": "reliability diagram"}


def eval_report_figures(batch):
    """The figures `medcli eval` draws for the batch's figure runs (medcli.workflow.figure_cells), flagged for
    the HTML report: per run its learning curves and, for the validation fold and the test set, the confusion
    matrix, ROC and precision-recall curves and the reliability diagram."""
    out = []
    for cell in grid_lib.figure_cells(config, batch.cells):
        run = cell_run_dir(cell)
        where = dict(category=cell.dataset, subcategory=cell.config_name)
        which = f"seed {cell.seed}, fold {cell.fold}"
        out.append(report(paths.learning_curves_file(run), caption="../report/learning_curves.rst", **where,
                          labels={"figure": "learning curves", "split": "train and val", "run": which}))
        for split in ("val", "test"):
            for kind in paths.EVAL_FIGURES:
                out.append(report(paths.eval_figure_file(paths.figures_dir(run), kind, split),
                                  caption=f"../report/{kind}.rst", **where,
                                  labels={"figure": REPORT_FIGURE_NAMES[kind], "split": split, "run": which}))
    return out


SUMMARY_FIGURE_NAMES = {
    "strategies": "validation metric of every run, by strategy",
    "learning_curves": "learning curves, mean and sd per configuration",
    "confusion_best": "test confusion matrix of the best configuration",
}


def summary_figure_dataset(wildcards):
    """The dataset of a summary figure `<dataset>_<kind>.png` (medcli.paths.parse_summary_figure)."""
    return paths.parse_summary_figure(wildcards.figure)[0]


def summary_figure_labels(wildcards):
    """The report's label of a summary figure (the `{figure}` wildcard of its file name)."""
    kind = paths.parse_summary_figure(wildcards.figure)[1]
    return {"figure": SUMMARY_FIGURE_NAMES.get(kind, wildcards.figure)}


def gradcam_galleries(wildcards):
    """The Grad-CAM galleries (one per true class present in the explained split), flagged for the HTML report.
    Their class names are read from each gradcam job's index.json, so the gradcam rule is a checkpoint."""
    split = (grid_lib.gradcam_settings(config) or {}).get("split", "test")
    out = []
    for cell in grid_lib.gradcam_cells(config, GRID):
        index = checkpoints.gradcam.get(
            dataset=cell.dataset, backbone=paths.backbone_dirname(cell.backbone), strategy=cell.strategy,
            seed=str(cell.seed), fold=str(cell.fold), split=split,
        ).output.index
        which = f"seed {cell.seed}, fold {cell.fold}"
        for cls, name in sorted(read_json(index)["galleries"].items()):
            out.append(report(os.path.join(os.path.dirname(index), name), caption=GRADCAM_CAPTION,
                              category=cell.dataset, subcategory=cell.config_name,
                              labels={"figure": f"Grad-CAM, true class {cls}", "split": split, "run": which}))
    return out
