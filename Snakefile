# medcli workflow: datasets × backbones × strategies × seeds × folds -> results/summary.md
#
#   snakemake --cores 2                      the built-in demo (config.yaml), locally
#   snakemake --profile slurm                the same on a SLURM cluster (see slurm/profile.yaml)
#   snakemake --configfile configs/X.yaml    another experiment
#
# Rules are thin: each calls one medcli command. Python logic lives in workflow/rules/common.smk, and every
# path comes from medcli.paths.

from snakemake.utils import min_version

min_version("9.0")


# The built-in demo unless another config is given (--configfile replaces it instead of merging into it).
if not config:

    configfile: "config.yaml"



report: "workflow/report/workflow.rst"


##### setup: config validation, the grid, path helpers #####
include: "workflow/rules/common.smk"
include: "workflow/rules/report_figures.smk"
##### stages #####
include: "workflow/rules/data.smk"
include: "workflow/rules/weights.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/eval.smk"
include: "workflow/rules/ensemble.smk"
include: "workflow/rules/gradcam.smk"
include: "workflow/rules/report.smk"


localrules:
    all,
    download_weights,
    experiment,
    report,


rule all:
    input:
        SUMMARY,
