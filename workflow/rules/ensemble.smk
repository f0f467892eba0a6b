# Ensembles of trained configurations, fitted on out-of-fold predictions (config: ensembles).


rule ensemble:
    input:
        ensemble_inputs,
    output:
        test=paths.metrics_file(ENSEMBLE, "test"),
        info=paths.ensemble_file(ENSEMBLE),
    params:
        results=lambda wc: RESULTS,
        members=ensemble_members_arg,
        bootstrap=eval_args_bootstrap(),
        rerun=RERUN,
    log:
        paths.log_file(LOGS, "ensemble", "{dataset}", paths.ensemble_key("{name}", "{method}", "{seed}")),
    benchmark:
        paths.benchmark_file(LOGS, "ensemble", "{dataset}", paths.ensemble_key("{name}", "{method}", "{seed}"))
    threads: 1
    resources:
        mem_mb=mem_mb("eval"),
        runtime=runtime("eval"),
    conda:
        "../envs/medcli.yaml"
    shell:
        "medcli ensemble --results {params.results:q} --dataset {wildcards.dataset} {params.members} --method {wildcards.method} "
        "--seed {wildcards.seed} --name {wildcards.name} --bootstrap {params.bootstrap} > {log:q} 2>&1"
