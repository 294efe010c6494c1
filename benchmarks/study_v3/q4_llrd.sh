#!/usr/bin/env bash
# Study v3, question 4: layer-wise lr decay, which the package ships on the literature's word. γ ∈ {1, 0.9, 0.8, 0.65}
# with AdamW's decay at a harmless λ (0.01) on the 100-step SST-2 setting, 5 seeds; reference γ = 1 (off).
#   bash benchmarks/study_v3/q4_llrd.sh
source "$(dirname "$0")/common.sh"
need_data "$DATA/train1600.tsv" --train-size 1600
sst2 "$DATA/train1600.tsv" 100 --weight_decay_mode wd --weight_decay 0.01
"${COMPARE[@]}" --grid lpwd_layer_lr_decay=1,0.9,0.8,0.65 --seeds 0,1,2,3,4 --out "$RESULTS/q4_llrd" -- "${CMD[@]}"
