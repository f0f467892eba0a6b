# Grad-CAM galleries with a faithfulness score for the runs chosen in config: gradcam.
# A checkpoint: which galleries exist (one per true class present in the split) is known from its index.json
# once it has run, and the report rule lists them for `snakemake --report` (report.smk, gradcam_galleries).


checkpoint gradcam:
    input:
        model=paths.model_file(RUN),
        predictions=paths.predictions_file(RUN, "{split}"),
    output:
        index=paths.gradcam_index_file(RUN, "{split}"),
    params:
        run=run_dir,
        args=grid_lib.gradcam_args(config),
        rerun=RERUN,
    log:
        paths.log_file(LOGS, "gradcam", "{dataset}", f"{RUN_NAME}.{{split}}"),
    benchmark:
        paths.benchmark_file(LOGS, "gradcam", "{dataset}", f"{RUN_NAME}.{{split}}")
    threads: resources_of("eval")["threads"]
    resources:
        mem_mb=mem_mb("eval"),
        runtime=runtime("eval"),
    retries: config["retries"]
    conda:
        "../envs/medcli.yaml"
    shell:
        "OMP_NUM_THREADS={threads} medcli gradcam {params.run:q} --split {wildcards.split} {params.args} > {log:q} 2>&1"
