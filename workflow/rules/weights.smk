# Pretrained weights: downloaded on the login node (compute nodes often have no internet) into the torch cache
# (torchvision) or the Hugging Face cache (`HF_HOME`; timm and Hub backbones), which training jobs read without a
# network (set HF_HUB_OFFLINE=1 on compute nodes for `hf-hub:` names); the built-in demo instead pretrains each
# backbone on a separate synthetic source task.


rule download_weights:
    output:
        paths.weights_marker(WORK, "{backbone}"),
    params:
        backbone=backbone_of,  # torchvision, timm (`arch.tag`) or `hf-hub:ORG/NAME` names, into the torch / Hugging Face cache
    log:
        paths.log_file(LOGS, "weights", "{backbone}", "download"),
    conda:
        "../envs/medcli.yaml"
    shell:
        "medcli weights download {params.backbone:q} > {log:q} 2>&1 && touch {output:q}"


rule pretrain:
    input:
        data=paths.synth_marker(paths.synth_data_dir(WORK, grid_lib.PRETRAIN_DATASET)),
    output:
        model=paths.model_file(paths.run_dir(RESULTS, grid_lib.PRETRAIN_DATASET, "{backbone}", "scratch", 0, 0)),
    params:
        settings=lambda wc, input: grid_lib.job_settings(
            grid_lib.pretrain_settings(config, backbone_of(wc)), data=os.path.dirname(input.data), name=grid_lib.PRETRAIN_DATASET,
            weights="none", out=paths.run_dir(RESULTS, grid_lib.PRETRAIN_DATASET, backbone_of(wc), "scratch", 0, 0), results=RESULTS,
            work=WORK, cache=CACHE,
        ),
        settings_file=lambda wc: paths.cell_settings_file(WORK, grid_lib.PRETRAIN_DATASET, backbone_of(wc), "scratch", 0, 0),
        launch=LAUNCH,
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
        "mkdir -p \"$(dirname {params.settings_file:q})\" && printf '%s\\n' {params.settings:q} > {params.settings_file:q} && "
        "OMP_NUM_THREADS={threads} {params.launch} train --config {params.settings_file:q} --workers {threads} > {log:q} 2>&1"
