#!/usr/bin/env bash
# Multi-node GPU training of vit_se over plain ssh (no scheduler): one process per host.
#
#   launch/gpu_ssh.sh --hosts=gpu01,gpu02 --gpus-per-node=8 --config=configs/sfew.py \
#       --workdir=/shared/runs/sfew [--venv=/shared/venvs/vit_se] [--config.x=y ...]
#
# starts, over ssh and all at once,
#   python -m vit_se.main --config=... --workdir=... \
#       --coordinator_address=gpu01:PORT --num_processes=2 --process_id=i
# on host i (the first host is process 0 and hosts the coordinator), prints every host's output
# here with a [i:host] prefix, and stops every process when one fails or on Ctrl-C (each remote
# process records its pid in /tmp/vit_se_PORT_i.pid, which is what gets killed).
# --module=kfold, ablation or cross_dataset starts python -m vit_se.kfold or vit_se.experiments
# instead, on one host (only vit_se.main starts JAX's multi-process runtime).
#
# What you need: passwordless ssh from here to every host (BatchMode: no prompts), the same
# repository checkout and a virtual environment with vit_se installed (pip install -e ".[cuda]")
# on every host, best on a shared file system (--remote_dir, --venv); hosts that reach the first
# host at --coordinator:--port (open the port in the firewall); a --workdir every host writes to
# (shared file system or gs://) and the prepared tfds data (--config.data_dir on the shared file
# system). Local: bash >= 4.
set -euo pipefail

PROG=launch/gpu_ssh.sh
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=launch/common.sh
. "$ROOT/launch/common.sh"

usage() {
  cat <<EOF
Usage: $PROG (--hosts=H1,H2,... | --hostfile=FILE) --config=FILE --workdir=DIR [options]
            [--module=MODULE] [--config.FIELD=VALUE ...] [-- extra flags of the module]

Options (environment variable in brackets):
  --hosts=H1,H2,...      hosts (user@host works), process i runs on host i [VIT_SE_HOSTS]
  --hostfile=FILE        one host per line (first word; '#' starts a comment), instead of --hosts
  --gpus-per-node=G      use GPUs 0..G-1 of each host (JAX_LOCAL_DEVICE_IDS; with another
                         --module, CUDA_VISIBLE_DEVICES); default: all
  --config=FILE[:ARG]    training config, relative to --remote_dir [VIT_SE_CONFIG] (required)
  --workdir=DIR          run directory every host writes to [VIT_SE_WORKDIR] (required)
  --module=MODULE        what runs [VIT_SE_MODULE]: main (default: python -m vit_se.main),
                         kfold (vit_se.kfold), ablation or cross_dataset (python -m
                         vit_se.experiments ablation / cross_dataset), the last three on one
                         host; cross_dataset takes its own flags after -- and no --config or
                         --workdir
  --remote_dir=DIR       repository checkout on the hosts [VIT_SE_REMOTE_DIR]
                         (default: this checkout's path, $ROOT)
  --venv=DIR             virtual environment on the hosts to activate [VIT_SE_VENV]
  --python=PYTHON        interpreter on the hosts [VIT_SE_PYTHON] (default: python3, or python
                         with --venv)
  --coordinator=HOST     name or address the hosts reach process 0 by (default: the first host)
  --port=PORT            coordinator port [VIT_SE_PORT] (default: 12321)
  --ssh_opt=OPT          extra ssh option, repeatable (e.g. --ssh_opt=-p2222)
  --dry-run              print the ssh commands, one per host, and run nothing
  -h, --help             this help

--config.FIELD=VALUE flags, and anything after --, go to the module unchanged.
EOF
}

HOSTS_CSV=${VIT_SE_HOSTS:-}
HOSTFILE=""
GPUS=""
CONFIG=${VIT_SE_CONFIG:-}
WORKDIR=${VIT_SE_WORKDIR:-}
MODULE=${VIT_SE_MODULE:-main}
REMOTE_DIR=${VIT_SE_REMOTE_DIR:-$ROOT}
VENV=${VIT_SE_VENV:-}
PYTHON=${VIT_SE_PYTHON:-}
COORDINATOR=""
PORT=${VIT_SE_PORT:-12321}
SSH_OPTS=(-o BatchMode=yes)
DRY_RUN=0
EXTRA=()

while (($#)); do
  arg=$1
  shift
  if [[ $arg == --*=* ]]; then
    key=${arg%%=*} val=${arg#*=} has_val=1
  else
    key=$arg val="" has_val=0
  fi
  case $key in
    --hosts | --hostfile | --gpus-per-node | --config | --workdir | --module | --remote_dir | \
      --venv | --python | --coordinator | --port | --ssh_opt)
      if ((!has_val)); then
        (($#)) || die "$key needs a value"
        val=$1
        shift
      fi
      ;;
  esac
  case $key in
    -h | --help)
      usage
      exit 0
      ;;
    --dry-run) DRY_RUN=1 ;;
    --hosts) HOSTS_CSV=$val ;;
    --hostfile) HOSTFILE=$val ;;
    --gpus-per-node) GPUS=$val ;;
    --config) CONFIG=$val ;;
    --workdir) WORKDIR=$val ;;
    --module) MODULE=$val ;;
    --remote_dir) REMOTE_DIR=$val ;;
    --venv) VENV=$val ;;
    --python) PYTHON=$val ;;
    --coordinator) COORDINATOR=$val ;;
    --port) PORT=$val ;;
    --ssh_opt) SSH_OPTS+=("$val") ;;
    --config.*) EXTRA+=("$arg") ;;
    --)
      EXTRA+=("$@")
      break
      ;;
    *) die "unknown argument $arg (see --help)" ;;
  esac
done

HOSTS=()
if [[ -n $HOSTFILE ]]; then
  [[ -z $HOSTS_CSV ]] || die "give --hosts or --hostfile, not both"
  [[ -r $HOSTFILE ]] || die "cannot read hostfile $HOSTFILE"
  while read -r line || [[ -n $line ]]; do
    line=${line%%#*}
    read -r host _ <<<"$line" || true
    [[ -z $host ]] || HOSTS+=("$host")
  done <"$HOSTFILE"
elif [[ -n $HOSTS_CSV ]]; then
  IFS=, read -r -a HOSTS <<<"$HOSTS_CSV"
fi
((${#HOSTS[@]})) || die "--hosts=H1,H2,... or --hostfile=FILE is required"
for host in "${HOSTS[@]}"; do
  [[ -n $host && $host != *[[:space:]]* ]] || die "bad host name '$host' in the host list"
done
module_argv "$MODULE"
if [[ ${MODULE_ARGV[*]} != *cross_dataset ]]; then
  [[ -n $CONFIG || (${MODULE_ARGV[*]} == *kfold && " ${EXTRA[*]} " == *" --aggregate_only "*) ]] ||
    die "--config (or VIT_SE_CONFIG) is required, e.g. --config=configs/sfew.py"
  [[ -n $WORKDIR ]] || die "--workdir (or VIT_SE_WORKDIR) is required, e.g. --workdir=/shared/runs/sfew"
fi
# Only vit_se.main starts JAX's multi-process runtime (its --coordinator_address flags): the other
# modules would run as independent processes on the same workdir.
MULTI_PROCESS=0
[[ ${MODULE_ARGV[*]} != "-m vit_se.main" ]] || MULTI_PROCESS=1
if ((!MULTI_PROCESS && ${#HOSTS[@]} > 1)); then
  die "--module=$MODULE runs on one host (only vit_se.main starts JAX's multi-process runtime): give one host"
fi
[[ $PORT =~ ^[1-9][0-9]*$ ]] || die "--port must be a number"
[[ -z $GPUS || $GPUS =~ ^[1-9][0-9]*$ ]] || die "--gpus-per-node must be a positive integer"
if ((${#HOSTS[@]} > 1)) && [[ $WORKDIR != /* && $WORKDIR != gs://* ]]; then
  die "--workdir=$WORKDIR is relative: give a shared absolute path or gs:// that every host writes to"
fi

NUM=${#HOSTS[@]}
COORDINATOR=${COORDINATOR:-${HOSTS[0]#*@}}
[[ -n $PYTHON ]] || { [[ -n $VENV ]] && PYTHON=python || PYTHON=python3; }

# The command host i runs, as one string for its shell.
remote_command() {
  local i=$1
  local cmd
  cmd="cd $(quote "$REMOTE_DIR")"
  [[ -z $VENV ]] || cmd+=" && . $(quote "$VENV/bin/activate")"
  cmd+=" && echo \$\$ > /tmp/vit_se_${PORT}_$i.pid && exec env PYTHONUNBUFFERED=1"
  # JAX_LOCAL_DEVICE_IDS is read by jax.distributed.initialize, which only vit_se.main calls.
  if [[ -n $GPUS ]]; then
    if ((MULTI_PROCESS)); then cmd+=" JAX_LOCAL_DEVICE_IDS="; else cmd+=" CUDA_VISIBLE_DEVICES="; fi
    cmd+=$(seq -s, 0 $((GPUS - 1)))
  fi
  local argv=("$PYTHON" "${MODULE_ARGV[@]}")
  [[ -z $CONFIG ]] || argv+=("--config=$CONFIG")
  [[ -z $WORKDIR ]] || argv+=("--workdir=$WORKDIR")
  ((!MULTI_PROCESS)) ||
    argv+=("--coordinator_address=$COORDINATOR:$PORT" "--num_processes=$NUM" "--process_id=$i")
  cmd+=" $(quote_all "${argv[@]}" "${EXTRA[@]}")"
  printf '%s' "$cmd"
}

ssh_command() { # i -> the ssh argv in SSH_ARGV
  SSH_ARGV=(ssh "${SSH_OPTS[@]}" -n "${HOSTS[$1]}" "$(remote_command "$1")")
}

if ((MULTI_PROCESS)); then
  note "$NUM hosts x ${GPUS:-all} GPUs, $NUM processes, coordinator $COORDINATOR:$PORT"
else
  note "1 host x ${GPUS:-all} GPUs, 1 process: $PYTHON ${MODULE_ARGV[*]}"
fi
if ((DRY_RUN)); then
  for ((i = 0; i < NUM; i++)); do
    ssh_command "$i"
    echo "+ $(quote_all "${SSH_ARGV[@]}")"
  done
  exit 0
fi

prefix_lines() {
  local line
  while IFS= read -r line || [[ -n $line ]]; do
    printf '[%s] %s\n' "$1" "$line"
  done
}

PIDS=()
stop_all() { # kills every process still running: the remote one by its pid file, then its ssh
  local i killers=()
  for ((i = 0; i < NUM; i++)); do
    [[ -n ${PIDS[$i]:-} ]] || continue
    ssh "${SSH_OPTS[@]}" -o ConnectTimeout=10 -n "${HOSTS[$i]}" \
      "kill -TERM \$(cat /tmp/vit_se_${PORT}_$i.pid) && rm -f /tmp/vit_se_${PORT}_$i.pid" \
      >/dev/null 2>&1 &
    killers+=($!)
  done
  ((${#killers[@]} == 0)) || wait "${killers[@]}" || true
  for ((i = 0; i < NUM; i++)); do
    [[ -z ${PIDS[$i]:-} ]] || kill "${PIDS[$i]}" 2>/dev/null || true
  done
}

# shellcheck disable=SC2329  # invoked by the trap below
on_signal() {
  trap - INT TERM
  echo "$PROG: interrupted: stopping every process" >&2
  stop_all
  wait || true
  exit 130
}
trap on_signal INT TERM

for ((i = 0; i < NUM; i++)); do
  ssh_command "$i"
  echo "+ $(quote_all "${SSH_ARGV[@]}")" >&2
  "${SSH_ARGV[@]}" > >(prefix_lines "$i:${HOSTS[$i]}") 2>&1 &
  PIDS[i]=$!
done

STATUS=0
while :; do
  running=0
  for ((i = 0; i < NUM; i++)); do
    pid=${PIDS[$i]:-}
    [[ -n $pid ]] || continue
    if kill -0 "$pid" 2>/dev/null; then
      running=1
      continue
    fi
    rc=0
    wait "$pid" || rc=$?
    PIDS[i]=""
    if ((rc != 0 && STATUS == 0)); then
      STATUS=$rc
      echo "$PROG: process $i (${HOSTS[$i]}) exited with status $rc: stopping the others" >&2
      stop_all
    fi
  done
  ((running)) || break
  sleep 1
done
wait || true
exit "$STATUS"
