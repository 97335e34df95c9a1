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
