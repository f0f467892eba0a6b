# Training: one job per grid cell (dataset × backbone × strategy × seed × fold).
# The resume checkpoint lives under `work`, never in a declared output, so a job killed at its walltime
# resumes when rerun (`--rerun-incomplete`).


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
        data=lambda wc: grid_lib.dataset_path(config, wc.dataset),
        dataset_args=lambda wc: grid_lib.dataset_args(config, wc.dataset),
        args=lambda wc: grid_lib.train_args(config, cell_of(wc)),
        weights=weights_arg,
        out=run_dir,
        launch=LAUNCH,
        work=lambda wc: WORK,  # resume checkpoints: deliberately not a declared output
        cache=CACHE,
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
        "OMP_NUM_THREADS={threads} {params.launch} train --data {params.data:q} --name {wildcards.dataset} {params.dataset_args} "
        "--splits {input.splits:q} --fold {wildcards.fold} --seed {wildcards.seed} --weights {params.weights:q} {params.args} "
        "--out {params.out:q} --work {params.work:q} --cache-dir {params.cache:q} --workers {threads} > {log:q} 2>&1"
