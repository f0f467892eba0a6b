# Evaluation: predictions, metrics with bootstrap CIs, calibration and figures for the validation fold and
# the test set of every trained model. One job per training batch (rules/train.smk), evaluating its cells'
# runs in one process (`medcli eval RUN...`), so evaluation does not flood a cluster with one job per cell either.
# The figures of the runs that draw them (config eval.figures) are outputs too, shown in `snakemake --report`:
# category dataset, subcategory configuration, one row per figure (rules/report_figures.smk).


for batch in BATCHES:

    rule:
        name:
            batch.rule.replace("train__", "eval__", 1)
        input:
            [f for cell in batch.cells for f in train_outputs(cell)],
        output:
            [f for cell in batch.cells for f in eval_outputs(cell)],
            eval_report_figures(batch),
        params:
            runs=[cell_run_dir(c) for c in batch.cells],
            args=eval_args(),
            figures=eval_figures_args(batch),
            rerun=RERUN,
        log:
            paths.log_file(LOGS, "eval", batch.dataset, batch.name),
        benchmark:
            paths.benchmark_file(LOGS, "eval", batch.dataset, batch.name)
        threads: resources_of("eval")["threads"]
        resources:
            mem_mb=mem_mb("eval"),
            runtime=batch_runtime("eval", batch, at_once=1),
        retries: config["retries"]
        conda:
            "../envs/medcli.yaml"
        shell:
            "OMP_NUM_THREADS={threads} medcli eval {params.runs:q} --split all {params.args} {params.figures} > {log:q} 2>&1"
