# Training: one job per grid cell (dataset × backbone × strategy × seed × fold).
# The job's settings (checked against medcli's settings schema when the DAG is built) are written to a file in
# `work` that `medcli train --config` reads; the same text is the job's rerun trigger. The resume checkpoint
# lives under `work` too, never in a declared output, so a job killed at its walltime resumes when rerun
# (`--rerun-incomplete`).


rule train:
    input:
        splits=paths.splits_file(RESULTS, "{dataset}"),
        data=dataset_input,
        weights=weights_input,
    output:
        model=paths.model_file(RUN),
        config=paths.config_file(RUN),
        history=paths.history_file(RUN),
        val=paths.predictions_file(RUN, "val"),
    params:
        settings=train_job_settings,  # common.smk
        settings_file=lambda wc: paths.cell_settings_file(WORK, wc.dataset, backbone_of(wc), wc.strategy, wc.seed, wc.fold),
        launch=LAUNCH,
        rerun=RERUN,
    log:
        paths.log_file(LOGS, "train", "{dataset}", RUN_NAME),
    benchmark:
        paths.benchmark_file(LOGS, "train", "{dataset}", RUN_NAME)
    threads: resources_of("train")["threads"]
    resources:
        mem_mb=mem_mb("train"),
        runtime=runtime("train"),
        **gpu_resources(),
    retries: config["retries"]
    conda:
        "../envs/medcli.yaml"
    shell:
        "mkdir -p \"$(dirname {params.settings_file:q})\" && printf '%s\\n' {params.settings:q} > {params.settings_file:q} && "
        "OMP_NUM_THREADS={threads} {params.launch} train --config {params.settings_file:q} --workers {threads} > {log:q} 2>&1"
