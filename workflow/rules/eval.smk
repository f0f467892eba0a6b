# Evaluation: predictions, metrics with bootstrap CIs, calibration and figures for the validation fold and
# the test set of every trained model.


rule eval:
    input:
        model=paths.model_file(RUN),
        val=paths.predictions_file(RUN, "val"),
    output:
        test=paths.predictions_file(RUN, "test"),
        test_metrics=paths.metrics_file(RUN, "test"),
        val_metrics=paths.metrics_file(RUN, "val"),
    params:
        run=run_dir,
        args=eval_args(),
        rerun=RERUN,
    log:
        paths.log_file(LOGS, "eval", "{dataset}", RUN_NAME),
    benchmark:
        paths.benchmark_file(LOGS, "eval", "{dataset}", RUN_NAME)
    threads: resources_of("eval")["threads"]
    resources:
        mem_mb=mem_mb("eval"),
        runtime=runtime("eval"),
    retries: config["retries"]
    conda:
        "../envs/medcli.yaml"
    shell:
        "OMP_NUM_THREADS={threads} medcli eval {params.run:q} --split all {params.args} > {log:q} 2>&1"
