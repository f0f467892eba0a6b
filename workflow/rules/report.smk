# The comparison: results/summary.md (+ .csv, .json, figures) over every run of the grid.
# `snakemake --report results/report.html` shows the summary, its figures and, per dataset and configuration,
# the evaluation figures and the Grad-CAM galleries (rules/report_figures.smk); captions in workflow/report/.


rule experiment:
    output:
        paths.experiment_file(RESULTS),
    params:
        description=grid_lib.describe(config, GRID),
    log:
        paths.log_file(LOGS, "report", "experiment"),
    conda:
        "../envs/medcli.yaml"
    shell:
        "printf '%s\\n' {params.description:q} > {output:q} 2> {log:q}"


rule report:
    input:
        experiment=paths.experiment_file(RESULTS),
        inspect=[paths.inspect_file(RESULTS, d) for d in config["datasets"]],
        splits=[paths.splits_file(RESULTS, d) for d in config["datasets"]],
        metrics=all_runs(lambda run: paths.metrics_file(run, "test")),
        ensembles=all_ensembles(),
        gradcam=all_gradcam(),
        galleries=gradcam_galleries,
    output:
        md=SUMMARY,
        html=report(paths.summary_file(RESULTS, "html"), caption="../report/summary.rst", category="Summary",
                    subcategory="all datasets", labels={"figure": "the comparison tables (summary.md as a page)"}),
        csv=paths.summary_file(RESULTS, "csv"),
        json=paths.summary_file(RESULTS, "json"),
        # the figures medcli report draws (which ones depends on the data), so a folder; created when empty
        figures=report(directory(paths.summary_figures_dir(RESULTS)), patterns=["{figure}.png"],
                       caption="../report/summary_figure.rst", category="Summary",
                       subcategory=summary_figure_dataset, labels=summary_figure_labels),
    params:
        results=lambda wc, output: os.path.dirname(output.md),
    log:
        paths.log_file(LOGS, "report", "summary"),
    conda:
        "../envs/medcli.yaml"
    shell:
        "medcli report {params.results:q} --out {output.md:q} > {log:q} 2>&1 && mkdir -p {output.figures:q}"
