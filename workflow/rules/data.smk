# Data: make generated datasets, inspect every dataset, split it once (shared by all seeds and runs).


rule synth_data:
    wildcard_constraints:
        dataset=r"[^/]+",  # the demo's pretraining source task too
    output:
        paths.synth_marker(paths.synth_data_dir(WORK, "{dataset}")),
    params:
        out=lambda wc: paths.synth_data_dir(WORK, wc.dataset),
        args=lambda wc: synth_args(wc.dataset),
    log:
        paths.log_file(LOGS, "data", "{dataset}", "synth"),
    benchmark:
        paths.benchmark_file(LOGS, "data", "{dataset}", "synth")
    threads: 1
    resources:
        mem_mb=mem_mb("data"),
        runtime=runtime("data"),
    conda:
        "../envs/medcli.yaml"
    shell:
        "medcli data synth {params.out:q} {params.args} --overwrite > {log:q} 2>&1"


rule inspect:
    input:
        dataset_input,
    output:
        paths.inspect_file(RESULTS, "{dataset}"),
    params:
        data=lambda wc: grid_lib.dataset_path(config, wc.dataset),
        args=lambda wc: grid_lib.dataset_args(config, wc.dataset),
        cache=CACHE,
    log:
        paths.log_file(LOGS, "data", "{dataset}", "inspect"),
    benchmark:
        paths.benchmark_file(LOGS, "data", "{dataset}", "inspect")
    threads: resources_of("data")["threads"]
    resources:
        mem_mb=mem_mb("data"),
        runtime=runtime("data"),
    conda:
        "../envs/medcli.yaml"
    shell:
        "medcli data inspect {params.data:q} {params.args} --cache-dir {params.cache:q} --workers {threads} --json {output:q} > {log:q} 2>&1"


rule split:
    input:
        dataset_input,
    output:
        paths.splits_file(RESULTS, "{dataset}"),
    params:
        data=lambda wc: grid_lib.dataset_path(config, wc.dataset),
        args=lambda wc: f"{grid_lib.dataset_args(config, wc.dataset)} {grid_lib.split_args(config, wc.dataset)}",
        cache=CACHE,
    log:
        paths.log_file(LOGS, "data", "{dataset}", "split"),
    benchmark:
        paths.benchmark_file(LOGS, "data", "{dataset}", "split")
    threads: resources_of("data")["threads"]
    resources:
        mem_mb=mem_mb("data"),
        runtime=runtime("data"),
    conda:
        "../envs/medcli.yaml"
    shell:
        "medcli split {params.data:q} {params.args} --cache-dir {params.cache:q} --workers {threads} --out {output:q} > {log:q} 2>&1"
