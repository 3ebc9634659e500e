#!/usr/bin/env bash
# The GPU benchmarks in one run (about 5-8 minutes on one H100, seeded random weights):
#   automatic masks  vit_b and vit_h, 32x32 grid, SamAutomaticMaskGenerator vs ours (benchmarks/amg_bench.py),
#                    ours eager and with the decoder compiled (decides SAMDROP_COMPILE=auto on CUDA);
#   prompt mode      vit_b and vit_h, SamPredictor vs ours at encoder batch 1 and 8 (predictor_bench.py).
# Every run writes JSON (and amg_bench a PNG chart) into $OUT, or benchmarks/results without it.
#
# On a machine with the project's .venv:  bash benchmarks/gpu.sh
# On the lent device machine (its python3 has torch but not segment-anything or pycocotools), first
# here:  bash benchmarks/gpu.sh --fetch-wheels   (downloads the two wheels into .whl/, git-ignored)
# then run `bash benchmarks/gpu.sh` there with .whl carried along.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--fetch-wheels" ]]; then
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl pycocotools==2.0.11 segment-anything==1.0
    ls .whl
    exit 0
fi

PY=python3
if [[ -x .venv/bin/python ]]; then
    PY=.venv/bin/python
elif [[ -d .whl ]]; then
    python3 -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/samdrop-site .whl/*.whl
    export PYTHONPATH="/tmp/samdrop-site:$PWD"
fi
export PYTHONUNBUFFERED=1
RESULTS="${OUT:-benchmarks/results}"
mkdir -p "$RESULTS" "$RESULTS/compiled"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$RESULTS/gpu.txt"
"$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" | tee -a "$RESULTS/gpu.txt"

started=$SECONDS
for model in vit_b vit_h; do
    "$PY" benchmarks/amg_bench.py --device cuda --model-type "$model" --grid 32 --images 3 \
        --compile off --output "$RESULTS"
    for batch in 1 8; do
        "$PY" benchmarks/predictor_bench.py --device cuda --model-type "$model" --images 16 \
            --batch-size "$batch" --amg-images 0 --repeats 1 --out "$RESULTS/predictor-$model-cuda-b$batch.json"
    done
    echo "== $model done after $((SECONDS - started)) s"
done
"$PY" benchmarks/amg_bench.py --device cuda --model-type vit_b --grid 32 --images 3 --compile on \
    --output "$RESULTS/compiled"
echo "== all done in $((SECONDS - started)) s; results in $RESULTS"
