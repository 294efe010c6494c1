#!/usr/bin/env bash
# Study v3, question 1: a trained anchor. SST-2 with enough sentences and steps to reach >= 85 % dev accuracy (or the
# best reachable), WD vs LPWD vs "WD, layer-wise λ" at a harmless λ and at the shrink S = 1 where the 100-step study
# saw its largest effect (λ = 200 there, Σ_t η_t = 0.005), 3 seeds.
#   bash benchmarks/study_v3/q1_anchor.sh pilot     # WD, λ = 0.01, seed 0: which training set and steps reach 85 %?
#   STEPS=800 TRAIN=train8000 bash benchmarks/study_v3/q1_anchor.sh      # the grid, at the pilot's choice
#   LAMBDAS=0.01,SAME_S,200 ...                      # also the very λ of the short study
source "$(dirname "$0")/common.sh"
TRAIN="${TRAIN:-train8000}"
STEPS="${STEPS:-800}"

need_data "$DATA/train8000.tsv" --train-size 8000
need_data "$DATA/train8000_min5.tsv" --train-size 8000 --min-words 5
if [ "${1:-grid}" = pilot ]; then
    sst2 "$DATA/train8000.tsv" 400 --weight_decay_mode wd --weight_decay 0.01
    "${COMPARE[@]}" --grid "train_file=$DATA/train8000.tsv,$DATA/train8000_min5.tsv" --grid max_steps=400,800 \
        --seeds 0 --out "$RESULTS/q1_anchor_pilot" -- "${CMD[@]}"
    exit 0
fi
SAME_S=$("$PY" -c "print(f'{1 / $(lr_sum 1e-4 "$STEPS"):.4g}')")   # λ with S = λ·Σ_t η_t = 1
LAMBDAS="${LAMBDAS:-0.01,SAME_S}"
LAMBDAS="${LAMBDAS//SAME_S/$SAME_S}"
sst2 "$DATA/$TRAIN.tsv" "$STEPS"
"${COMPARE[@]}" --grid weight_decay_mode+lpwd_layerwise=wd+false,lpwd+true,wd+true --grid "weight_decay=$LAMBDAS" \
    --reference weight_decay_mode+lpwd_layerwise=wd+false --seeds 0,1,2 --out "$RESULTS/q1_anchor" -- "${CMD[@]}"
