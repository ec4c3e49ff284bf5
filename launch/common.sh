# shellcheck shell=bash
# What the launch scripts share (sourced, never run): messages, quoting, and --dry-run.
# The sourcing script sets PROG (its name in messages) and DRY_RUN (1: print, run nothing) first.

die() {
  echo "$PROG: $*" >&2
  exit 2
}

# Quotes one word for a POSIX shell only when it needs it, so printed commands stay readable and
# can be pasted back as they are.
quote() {
  if [[ -n $1 && $1 != *[!A-Za-z0-9_./:=,@%+-]* ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

quote_all() {
  local out="" word
  for word in "$@"; do
    out+="${out:+ }$(quote "$word")"
  done
  printf '%s' "$out"
}

# Prints a command as '+ cmd' (stdout under --dry-run, else stderr) and runs it unless --dry-run.
step() {
  if ((DRY_RUN)); then
    echo "+ $(quote_all "$@")"
  else
    echo "+ $(quote_all "$@")" >&2
    "$@"
  fi
}

# Prints a line of shell that is not a plain command (an export, a source) as '+ line'.
show() {
  if ((DRY_RUN)); then echo "+ $*"; else echo "+ $*" >&2; fi
}

note() {
  if ((DRY_RUN)); then echo "# $*"; else echo "# $*" >&2; fi
}

# What a launcher's --module starts: sets MODULE_ARGV to the arguments after the interpreter
# (-m vit_se.main, -m vit_se.kfold, -m vit_se.experiments ablation / cross_dataset).
# shellcheck disable=SC2034  # MODULE_ARGV is read by the sourcing script
module_argv() {
  case ${1#vit_se.} in
    main) MODULE_ARGV=(-m vit_se.main) ;;
    kfold) MODULE_ARGV=(-m vit_se.kfold) ;;
    ablation | experiments.ablation) MODULE_ARGV=(-m vit_se.experiments ablation) ;;
    cross_dataset | experiments.cross_dataset) MODULE_ARGV=(-m vit_se.experiments cross_dataset) ;;
    *) die "unknown --module '$1' (main, kfold, ablation, cross_dataset)" ;;
  esac
}
