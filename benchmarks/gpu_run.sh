#!/usr/bin/env bash
# One lease's GPU checks, in the order their figures matter; each writes its report as it goes, so a run cut
# at its time limit keeps what it measured.  On the device machine, from the repository root:
#   OUT=/some/folder bash benchmarks/gpu_run.sh
set -u
OUT=${OUT:-benchmarks/results}
export PYTHONPATH=. HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
timeout 100 python -m benchmarks.gpu_check --parts f --out "$OUT/gpu_f.md"
timeout 220 python -m benchmarks.gpu_check --parts ae --out "$OUT/gpu_ae.md"
timeout 130 python -m benchmarks.gpu_profile --out "$OUT/gpu_profile.md"
timeout 130 python -m benchmarks.gpu_check --parts c --out "$OUT/gpu_c.md"
echo "done"
