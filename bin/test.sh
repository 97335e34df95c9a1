#!/usr/bin/env bash
# Installs what the tests need (bin/setup-env.sh --dev) and runs the test suite with pytest.
# Arguments go to pytest; when none of them names a test file or folder, the whole suite (tests/)
# runs, e.g. bin/test.sh -k resume   or   bin/test.sh tests/test_trainer.py::test_training_loss_falls
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  cat <<'USAGE'
Usage: bin/test.sh [--no-setup] [PYTEST_ARGS...]

Runs the test suite with the project's .venv (made or refreshed first by bin/setup-env.sh --dev).
PYTEST_ARGS go to pytest as they are; when none of them is a test path (a file or folder, or
FILE::TEST), the whole suite under tests/ runs.

  --no-setup   skip bin/setup-env.sh (the venv must exist)
  -h, --help   this text (first argument only; later ones go to pytest)

Environment: SPANWISE_VENV (default .venv), OMP_NUM_THREADS (default 1). CI runs exactly this.
USAGE
}

setup=1
case "${1:-}" in
  -h | --help) usage; exit 0 ;;
  --no-setup) setup=0; shift ;;
esac
args=("$@")

((!setup)) || bin/setup-env.sh --dev
py=${SPANWISE_VENV:-.venv}/bin/python
[[ -x "$py" ]] || { echo "test.sh: $py not found: run bin/setup-env.sh --dev (or drop --no-setup)" >&2; exit 2; }
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

# The default target is tests/, unless an argument already names a test path.
target=(tests)
for arg in ${args[@]+"${args[@]}"}; do
  if [[ "$arg" != -* && -e "${arg%%::*}" ]]; then
    target=()
    break
  fi
done

# pytest exits 5 when it collected no tests; that is a failure here, as is any non-zero code.
set +e
"$py" -m pytest -q -p no:cacheprovider ${target[@]+"${target[@]}"} ${args[@]+"${args[@]}"}
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
  echo "test.sh: pytest collected no tests; treating as failure" >&2
fi
exit $rc
