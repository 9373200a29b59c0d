#!/usr/bin/env bash
# Run the whole paper grid in dependency order, then write the report.
#
#   scripts/run_paper_grid.sh                                  # locally, one job at a time
#   scripts/run_paper_grid.sh hydra/launcher=slurm_gpu hydra.launcher.partition=gpu
#   L2O_RUNS=/shared/runs scripts/run_paper_grid.sh hydra/launcher=slurm_cpu
#
# Every argument is passed to every sweep (launcher, paths.runs_dir, meta_train.n_iterations,
# evaluation.n_runs, ...). Cells are deterministic folders: relaunching skips finished cells
# and resumes interrupted ones, so after a crash or a cancelled allocation just run it again.
# Set L2O_SWEEPS="table2 table4" to run only some result sweeps (their tuning runs first).
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${L2O_RUNS:-runs}"
results=(${L2O_SWEEPS:-table2 fig2 fig5_6 fig7 fig8_table3 table4 fig9 dm_paper dm_quadratic_eval})
declare -A tuning=(
    [table2]=tune_activations [fig2]=tune_horizons [fig5_6]="tune_activations tune_depth"
    [fig7]=tune_cnn [fig8_table3]=tune_lstm [table4]=tune_activations [fig9]=tune_activations
    [dm_paper]=tune_dm_paper [dm_quadratic_eval]=tune_dm_paper
)
sweep() { echo "=== $1"; l2o --config-name "$@"; }

sweep paper_meta_train "$@"
declare -A done_tuning=()
for result in "${results[@]}"; do
    for tune in ${tuning[$result]}; do
        if [ -z "${done_tuning[$tune]:-}" ]; then
            sweep "$tune" "$@"
            done_tuning[$tune]=1
        fi
    done
    sweep "$result" "$@"
done
l2o-report --runs "$runs/paper" --out docs/results
