# Training: one job per batch of grid cells (one configuration's folds of one seed, at most
# `resources.cells_per_job` of them), each batch a rule of its own with the cells' run files as outputs. A job
# trains its cells one after another in one process (`medcli train --cells`), `resources.cells_per_gpu` at a
# time, so the start-up (imports, CUDA, dataset index) is paid once per job and a grid of 600 cells is tens of
# cluster jobs, not hundreds. Each cell still has its own log (logs/train/<dataset>/<run>.log), its own resume
# checkpoint under `work`, and a cell that fails does not stop the others; the job then fails, and its rerun
# restores the cells that had finished (from `work`) instead of training them again. The job's settings
# (checked against medcli's settings schema when the DAG is built) are written to two files in `work` that
# `medcli train --config COMMON --cells CELLS` reads; the same text is the job's rerun trigger.

for batch in BATCHES:

    rule:
        name:
            batch.rule
        input:
            splits=paths.splits_file(RESULTS, batch.dataset),
            data=dataset_input(batch.dataset),
            weights=batch_weights(batch)[0],
        output:
            [f for cell in batch.cells for f in train_outputs(cell)],
        params:
            settings=batch_texts(batch),
            settings_file=paths.batch_settings_file(WORK, batch.dataset, batch.name, "common"),
            cells_file=paths.batch_settings_file(WORK, batch.dataset, batch.name, "cells"),
            logs=LOGS,
            at_once=CELLS_AT_ONCE,
            launch=LAUNCH,
            rerun=RERUN,
        log:
            paths.log_file(LOGS, "train", batch.dataset, batch.name),
            [cell_log(cell) for cell in batch.cells],
        benchmark:
            paths.benchmark_file(LOGS, "train", batch.dataset, batch.name)
        threads: resources_of("train")["threads"]
        resources:
            mem_mb=batch_mem_mb(),
            runtime=batch_runtime("train", batch, CELLS_AT_ONCE),
            **gpu_resources(),
        retries: config["retries"]
        conda:
            "../envs/medcli.yaml"
        shell:
            "mkdir -p \"$(dirname {params.settings_file:q})\" && printf '%s\\n' {params.settings[0]:q} > {params.settings_file:q} && "
            "printf '%s\\n' {params.settings[1]:q} > {params.cells_file:q} && "
            "OMP_NUM_THREADS={threads} {params.launch} train --config {params.settings_file:q} --cells {params.cells_file:q} "
            "--cell-logs {params.logs:q} --cells-at-once {params.at_once} --workers {threads} > {log[0]:q} 2>&1"
