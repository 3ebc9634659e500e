#!/usr/bin/env bash
# The GPU benchmarks in one run (5-8 minutes on one H100 for SAM 1; the SAM 2.1 and SAM 3 runs were
# added without a GPU to try them on, so their time is not known yet; seeded random weights):
#   automatic masks  vit_b and vit_h, 32x32 grid, SamAutomaticMaskGenerator vs ours (benchmarks/amg_bench.py),
#                    ours eager and with the decoder compiled (decides SAMDROP_COMPILE=auto on CUDA);
#   prompt mode      vit_b and vit_h, SamPredictor vs ours at encoder batch 1 and 8 (predictor_bench.py);
#   SAM 2.1          hiera tiny, transformers' mask-generation pipeline vs ours (32x32 and 16x16 grids on
#                    640x480), Sam2Processor + Sam2Model per prompt set vs ours, SAM 2.1 tiny vs SAM 1 vit_b
#                    automatic masks (sam2_bench.py);
#   SAM 3 concepts   the full architecture, plain transformers use vs ours, 4 concepts x 4 images
#                    (concepts_bench.py).
# Every run writes JSON (and amg_bench a PNG chart) into $OUT, or benchmarks/results without it.
#
# On a machine with the project's .venv:  bash benchmarks/gpu.sh
# On the lent device machine (its python3 has torch but not segment-anything, pycocotools or
# transformers), first here:  bash benchmarks/gpu.sh --fetch-wheels   (downloads those wheels, with
# transformers' and scikit-image's dependencies at constraints.txt's pins, into .whl/, git-ignored)
# then run `bash benchmarks/gpu.sh` there with .whl carried along.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--fetch-wheels" ]]; then
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl pycocotools==2.0.11 segment-anything==1.0
    python3 -m pip download --quiet --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -c constraints.txt -d .whl transformers scikit-image
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
for grid in 16 32; do
    "$PY" benchmarks/sam2_bench.py --device cuda --mode amg --grid "$grid" --runs 3 --output "$RESULTS/sam2-grid$grid"
done
"$PY" benchmarks/sam2_bench.py --device cuda --mode prompts --images 5 --runs 3 --output "$RESULTS"
"$PY" benchmarks/sam2_bench.py --device cuda --mode families --grid 32 --compile off --runs 3 --output "$RESULTS"
"$PY" benchmarks/concepts_bench.py --device cuda --config full --out "$RESULTS/concepts-full-cuda.json"
echo "== all done in $((SECONDS - started)) s; results in $RESULTS"
