# Pretrained weights: ImageNet weights are downloaded on the login node (compute nodes often have no
# internet); the built-in demo instead pretrains each backbone on a separate synthetic source task.


rule download_weights:
    output:
        paths.weights_marker(WORK, "{backbone}"),
    log:
        paths.log_file(LOGS, "weights", "{backbone}", "download"),
    conda:
        "../envs/medcli.yaml"
    shell:
        "medcli weights download {wildcards.backbone} > {log:q} 2>&1 && touch {output:q}"


rule pretrain:
    input:
        data=paths.synth_marker(os.path.join(WORK, "data", grid_lib.PRETRAIN_DATASET)),
    output:
        model=paths.model_file(paths.run_dir(RESULTS, grid_lib.PRETRAIN_DATASET, "{backbone}", "scratch", 0, 0)),
    params:
        data=lambda wc, input: os.path.dirname(input.data),
        out=lambda wc: paths.run_dir(RESULTS, grid_lib.PRETRAIN_DATASET, wc.backbone, "scratch", 0, 0),
        args=lambda wc: grid_lib.pretrain_args(config, wc.backbone),
        name=grid_lib.PRETRAIN_DATASET,
        launch=LAUNCH,
        work=lambda wc: WORK,  # resume checkpoints: deliberately not a declared output
        cache=CACHE,
        rerun=RERUN,
    log:
        paths.log_file(LOGS, "pretrain", grid_lib.PRETRAIN_DATASET, "{backbone}"),
    benchmark:
        paths.benchmark_file(LOGS, "pretrain", grid_lib.PRETRAIN_DATASET, "{backbone}")
    threads: resources_of("train")["threads"]
    resources:
        mem_mb=mem_mb("train"),
        runtime=runtime("train"),
        **gpu_resources(),
    retries: config["retries"]
    conda:
        "../envs/medcli.yaml"
    shell:
        "OMP_NUM_THREADS={threads} {params.launch} train --data {params.data:q} --name {params.name} {params.args} "
        "--out {params.out:q} --work {params.work:q} --cache-dir {params.cache:q} --workers {threads} > {log:q} 2>&1"
