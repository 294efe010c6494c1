#!/usr/bin/env bash
# Study v3, question 3: does the shrink S = λ·Σ_t η_t predict the harm of decay where λ does not? WD on the SST-2
# setting at 2 learning rates × 2 run lengths × λ placed at S = 0.05, 0.25, 0.5, 1, 2 (harmless to collapse), 3 seeds.
# One linked axis (learning_rate+max_steps+weight_decay) holds the 20 cells, so each (lr, steps) gets the λ of its
# own S grid; compare plots accuracy against λ (one line per lr, steps) and, from the runs' recorded shrink (issue 19),
# against S; until runs record it, plot_shrink.py draws accuracy against the S of the design.
#   bash benchmarks/study_v3/q3_transfer.sh
source "$(dirname "$0")/common.sh"
need_data "$DATA/train1600.tsv" --train-size 1600
CELLS=()
for lr in 5e-5 2e-4; do
    for steps in 100 200; do
        total=$(lr_sum "$lr" "$steps")
        for s in 0.05 0.25 0.5 1 2; do
            CELLS+=("$lr+$steps+$("$PY" -c "print(f'{$s / $total:.4g}')")")
        done
    done
done
sst2 "$DATA/train1600.tsv" 100 --weight_decay_mode wd
"${COMPARE[@]}" --grid "learning_rate+max_steps+weight_decay=$(IFS=,; echo "${CELLS[*]}")" --seeds 0,1,2 \
    --out "$RESULTS/q3_transfer" -- "${CMD[@]}"
"$PY" -m benchmarks.study_v3.plot_shrink "$RESULTS/q3_transfer"
