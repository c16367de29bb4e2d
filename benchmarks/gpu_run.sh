#!/usr/bin/env bash
# Issue 22's GPU figures in one run, from the repository root on a machine with one GPU:
#   OUT=/some/folder PY=python bash benchmarks/gpu_run.sh
# ResNet-50 and ViT-B/16 (torchvision:vit_b_16, through the model sources) at 224x224 on synthetic JPEGs of
# about 110 KB: per teacher, the forward-only limit on device tensors, each decoder alone (Pillow, nvJPEG),
# the bare bf16 loop and the soft-label stage (1 actor with the GPU, 2 sharing it), then the unit tests that
# need a GPU. Each part's output goes to $OUT; a part that fails does not stop the next.
set -u
OUT=${OUT:-/tmp/distkd-gpu}
PY=${PY:-python}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv" 2>&1
"$PY" -m pytest -q -p no:cache tests/unit/test_teacher_speed.py > "$OUT/unit.txt" 2>&1
for teacher in resnet50:40000 vit_b_16:10000; do
  timeout 420 "$PY" benchmarks/teacher_throughput.py --gpu --synthetic 224 --jpeg-noise 0.75 \
    --teachers "$teacher" --shard-rows 5000 > "$OUT/throughput-${teacher%%:*}.md" 2>&1
done
tail -n 40 "$OUT"/*.md "$OUT/unit.txt"
