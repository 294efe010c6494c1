#!/usr/bin/env bash
# Study v3, question 2: cautious decay. CWD vs WD on the 100-step SST-2 setting at the study's λ grid, 5 seeds.
# NEEDS the decay-rules issue (19): --lpwd_cautious. The from-scratch Llama part is question 5's cautious arm.
# Equal λ: the table; equal shrinkage: the plot against the norm ratio (and against S once runs record it).
#   bash benchmarks/study_v3/q2_cautious.sh
source "$(dirname "$0")/common.sh"
need_data "$DATA/train1600.tsv" --train-size 1600
sst2 "$DATA/train1600.tsv" 100 --weight_decay_mode wd
"${COMPARE[@]}" --grid lpwd_cautious=false,true --grid weight_decay=0.01,30,60,100,200,300 \
    --reference lpwd_cautious=false --seeds 0,1,2,3,4 --out "$RESULTS/q2_cautious" -- "${CMD[@]}"
