# Helpers shared by the bin/*.sh scripts; sourced (not run) after `cd` to the repository root:
#   PROG=name; source bin/_common.sh
# die: the message on stderr, prefixed with $PROG, exit 2 (a usage error).

die() {
  echo "$PROG: $*" >&2
  exit 2
}

# Quote one word for a POSIX shell, leaving plain words as they are (like Python's shlex.quote).
shell_quote() {
  if [[ -n "$1" && "$1" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# The words of a command, each quoted as needed, on one line.
quote_cmd() {
  local out="" word
  for word in "$@"; do
    out+="${out:+ }$(shell_quote "$word")"
  done
  printf '%s' "$out"
}

need_value() { # an option's value: present, not empty and not the next option
  (($# >= 2)) && [[ -n "$2" && "$2" != --* ]] || die "$1 needs a value"
}

# What is wrong with a Cloud Storage bucket name by Google's naming rules, or nothing when it is
# valid: lowercase letters, digits, -, _ and .; starts and ends with a letter or digit; 3-63
# characters (up to 222 with dots, each dot-separated part at most 63); not an IP address; not
# beginning with "goog"; no "google" nor a look-alike of it.
bucket_problem() {
  local b=$1 part
  local -a parts
  if [[ -z "$b" ]]; then
    echo "it is empty"
  elif [[ "$b" =~ [^a-z0-9._-] ]]; then
    echo "only lowercase letters, digits, '-', '_' and '.' are allowed"
  elif ((${#b} < 3)); then
    echo "it has ${#b} character$( ((${#b} == 1)) || echo s); bucket names have 3 to 63"
  elif [[ "$b" != *.* ]] && ((${#b} > 63)); then
    echo "it has ${#b} characters; bucket names have 3 to 63 (up to 222 with dots)"
  elif ((${#b} > 222)); then
    echo "it has ${#b} characters; a bucket name with dots has at most 222"
  elif [[ ! "$b" =~ ^[a-z0-9] || ! "$b" =~ [a-z0-9]$ ]]; then
    echo "it must start and end with a letter or a digit"
  elif [[ "$b" =~ ^[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$ ]]; then
    echo "it looks like an IP address"
  elif [[ "$b" == goog* ]]; then
    echo "it begins with 'goog', which Cloud Storage reserves"
  elif [[ "$b" =~ g[o0][o0]g[l1]e ]]; then
    echo "it contains 'google' or a look-alike of it, which Cloud Storage reserves"
  else
    IFS=. read -ra parts <<<"$b"
    for part in "${parts[@]}"; do
      if [[ -z "$part" ]]; then
        echo "it has an empty part between dots"
        return
      elif ((${#part} > 63)); then
        echo "its part '$part' has ${#part} characters; each dot-separated part has at most 63"
        return
      fi
    done
  fi
}

# Dies unless $2 is gs://BUCKET[/PATH] with a valid bucket name; $1 names the flag in the message.
check_gs_uri() {
  local flag=$1 uri=$2 bucket problem
  [[ "$uri" == gs://* ]] || die "$flag must be a gs:// URI (gs://BUCKET/PATH), got $uri"
  bucket=${uri#gs://}
  bucket=${bucket%%/*}
  problem=$(bucket_problem "$bucket")
  [[ -z "$problem" ]] || die "$flag $uri: '$bucket' is not a valid bucket name: $problem"
}

# Dies, in one line, unless gcloud is installed and has an active account (it reads only local files).
require_gcloud() {
  command -v gcloud >/dev/null ||
    die "gcloud not found: install the Google Cloud SDK (https://cloud.google.com/sdk/docs/install), then gcloud auth login (or use --dry-run)"
  [[ -n "$(gcloud config get-value account 2>/dev/null)" ]] ||
    die "gcloud has no active account: run gcloud auth login (or use --dry-run)"
}

# Dies, in one line, unless the Google client libraries will find Application Default Credentials:
# $GOOGLE_APPLICATION_CREDENTIALS, gcloud's application-default file, or a Google Cloud VM.
require_adc() {
  local file=${GOOGLE_APPLICATION_CREDENTIALS:-}
  if [[ -n "$file" ]]; then
    [[ -f "$file" ]] || die "GOOGLE_APPLICATION_CREDENTIALS is $file, which does not exist"
    return 0
  fi
  [[ -f "${CLOUDSDK_CONFIG:-$HOME/.config/gcloud}/application_default_credentials.json" ]] && return 0
  grep -qs Google /sys/class/dmi/id/product_name && return 0 # a Compute Engine VM: the metadata server
  if command -v gcloud >/dev/null; then
    die "no Google Cloud credentials: run gcloud auth application-default login, or set GOOGLE_APPLICATION_CREDENTIALS to a key file (or use --dry-run)"
  fi
  die "no Google Cloud credentials and no gcloud: install the Google Cloud SDK (https://cloud.google.com/sdk/docs/install) and run gcloud auth application-default login, or set GOOGLE_APPLICATION_CREDENTIALS to a key file (or use --dry-run)"
}

# A `python -m module ...` command, one flag (with its values) per line, as a shell would take
# it back.
print_module_cmd() {
  local line word
  line="$(shell_quote "$1") $(shell_quote "$2") $(shell_quote "$3")" # python -m module
  for word in "${@:4}"; do
    if [[ "$word" == -* && ! "$word" =~ ^-[0-9.]+$ ]]; then
      printf '%s \\\n' "$line"
      line="  $(shell_quote "$word")"
    else
      line+=" $(shell_quote "$word")"
    fi
  done
  printf '%s\n' "$line"
}

# The end of the Dataflow submit scripts: with DRY_RUN 1 print the command and stop; else check
# PYTHON and, unless Beam's --no_auth is among the flags, Application Default Credentials, show
# the command on stderr and run it in place of the script.
#   run_module_cmd DRY_RUN PYTHON "${cmd[@]}"
run_module_cmd() {
  local dry_run=$1 python=$2 f no_auth=0
  shift 2
  if ((dry_run)); then
    echo "# dry run: nothing is executed. From the repository root ($(pwd)):"
    print_module_cmd "$@"
    exit 0
  fi
  [[ -x "$python" ]] || command -v "$python" >/dev/null || die "no Python at $python: run bin/setup-env.sh first, or set PYTHON"
  for f in "$@"; do
    [[ "$f" != --no_auth && "$f" != --no-auth ]] || no_auth=1 # Beam's option for endpoints that need none
  done
  ((no_auth)) || require_adc
  echo "+ $(print_module_cmd "$@")" >&2
  exec "$@"
}

# The Dataflow scripts' --bucket, --temp_location and --staging_location: the temp and staging
# locations default to gs://BUCKET/dataflow/{tmp,staging}, else the staging location lies beside
# the temp location; all checked. Reads and sets the caller's variables bucket, temp_location
# and staging_location.
resolve_dataflow_locations() {
  local name problem
  if [[ -n "$bucket" ]]; then
    bucket=${bucket#gs://}
    bucket=${bucket%/}
    [[ "$bucket" != */* ]] || die "--bucket takes a bucket name (e.g. my-bucket), not a path: got $bucket"
    problem=$(bucket_problem "$bucket")
    [[ -z "$problem" ]] || die "--bucket $bucket is not a valid bucket name: $problem"
    temp_location=${temp_location:-gs://$bucket/dataflow/tmp}
    staging_location=${staging_location:-gs://$bucket/dataflow/staging}
  fi
  [[ -n "$temp_location" ]] || die "say where Dataflow keeps its files: --bucket BUCKET, or --temp_location gs://... (and --staging_location)"
  temp_location=${temp_location%/}
  if [[ -z "$staging_location" ]]; then # beside the temp location (inside it when that is a bare bucket)
    if [[ "$temp_location" =~ ^gs://[^/]+$ ]]; then
      staging_location="$temp_location/staging"
    else
      staging_location="${temp_location%/*}/staging"
    fi
  fi
  staging_location=${staging_location%/}
  for name in temp_location staging_location; do
    check_gs_uri "--$name" "${!name}"
  done
}
