# The comparison: results/summary.md (+ .csv, .json, figures) over every run of the grid.


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
    output:
        md=report(SUMMARY, category="Summary"),
        csv=paths.summary_file(RESULTS, "csv"),
        json=paths.summary_file(RESULTS, "json"),
    params:
        results=lambda wc, output: os.path.dirname(output.md),
    log:
        paths.log_file(LOGS, "report", "summary"),
    conda:
        "../envs/medcli.yaml"
    shell:
        "medcli report {params.results:q} --out {output.md:q} > {log:q} 2>&1"
