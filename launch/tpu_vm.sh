#!/usr/bin/env bash
# Cloud TPU VMs and pod slices for vit_se: create, install, run, logs, stop, status, delete.
#
# What you need:
#   - the gcloud CLI, logged in (`gcloud auth login`), a project with the Cloud TPU API enabled
#     (`gcloud services enable tpu.googleapis.com`) and TPU quota for the accelerator type in the
#     zone you pick (on-demand, spot or preemptible quota are separate);
#   - a GCS bucket in the same region, for the workdir (checkpoints, TensorBoard events, exports)
#     and the prepared tfds data: on a multi-host slice every worker must see the same files, so
#     --workdir must be a gs:// path there;
#   - the datasets prepared once into the bucket from any machine with your manual files (the
#     licences forbid redistribution), e.g.
#       tfds build vit_se/datasets/raf_db --config=aligned --manual_dir=$HOME/fer/raf_db \
#           --data_dir=gs://BUCKET/tensorflow_datasets
#     then --data_dir=gs://BUCKET/tensorflow_datasets here; official checkpoints are read from
#     gs:// directly (--config.pretrained_path=gs://vit_models/...).
#   - the first `--worker=all` ssh makes gcloud create and propagate an ssh key (it may prompt).
#
# Worker (host) count, from the accelerator type NAME-N:
#   v2-N, v3-N: N TensorCores, 8 per host           -> N/8 workers   (v3-32: 4)
#   v4-N, v5p-N: N TensorCores, 2 per chip, 4 chips per host -> N/8  (v4-32: 16 chips, 4 workers)
#   v5litepod-N (v5e), v6e-N: N chips; N <= 8 is one host (v6e-8: 8 chips on one host),
#     larger slices have 4 chips per host -> N/4 workers (v5litepod-16: 4, v6e-256: 64).
# Other types: pass --workers=N and --version.
#
# Examples (see --help):
#   launch/tpu_vm.sh create --name=vit-se --zone=us-central2-b --accelerator=v4-32
#   launch/tpu_vm.sh install --name=vit-se --zone=us-central2-b --accelerator=v4-32
#   launch/tpu_vm.sh run --name=vit-se --zone=us-central2-b --accelerator=v4-32 \
#       --config=configs/raf_db.py --workdir=gs://BUCKET/runs/raf_db \
#       --data_dir=gs://BUCKET/tensorflow_datasets \
#       --config.pretrained_path=gs://vit_models/imagenet21k+imagenet2012/ViT-B_16-224.npz
#   launch/tpu_vm.sh delete --name=vit-se --zone=us-central2-b
# Every subcommand takes --dry-run: it prints the exact commands (`+ ` lines) and runs nothing.
set -euo pipefail

PROG=launch/tpu_vm.sh
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=launch/common.sh
. "$ROOT/launch/common.sh"

usage() {
  cat <<EOF
Usage: $PROG SUBCOMMAND [options] [--config.FIELD=VALUE ...] [-- extra flags of the module]

Subcommands:
  create    compile --config for --accelerator here first (the preflight, python -m vit_se.main
            --compile_for; it stops create when the config does not fit), then create the TPU
            VM / pod slice (gcloud compute tpus tpu-vm create)
  install   put vit_se on every worker and pip install -e '.[tpu]' there
            (git clone of --repo at --ref, or, without --repo, this checkout's files via scp)
  run       run the --module (default python -m vit_se.main) on all workers at once; output
            streams here and is appended to ~/vit_se_run.log on each worker
  logs      print (or --follow) ~/vit_se_run.log of --worker (default 0; 'all' for every worker)
  stop      stop the run on every worker at a checkpoint (SIGINT; the same run resumes it;
            after Ctrl-C on run, the workers keep going)
  status    describe the TPU (state, health, accelerator, runtime, endpoints)
  delete    delete the TPU (asks for confirmation unless --yes)

Options (environment variable in brackets):
  --name=NAME            TPU name [TPU_NAME] (default: vit-se)
  --zone=ZONE            zone, e.g. us-central2-b [ZONE] (required)
  --project=PROJECT      project; gcloud's configured one if unset [PROJECT_ID]
  --accelerator=TYPE     accelerator type, e.g. v4-32, v5litepod-16, v5p-8, v6e-8 [ACCELERATOR_TYPE]
                         (create; run uses it for the worker count, asking gcloud if unset)
  --version=RUNTIME      TPU software version [RUNTIME_VERSION] (default by generation:
                         v2/v3/v4 tpu-ubuntu2204-base, v5litepod v2-alpha-tpuv5-lite,
                         v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e)
  --workers=N            override the worker count derived from --accelerator
  --spot | --preemptible create a Spot / preemptible TPU (runs resume after preemption)
  --config=FILE[:ARG]    training config, relative to the repository [VIT_SE_CONFIG] (run;
                         create compiles it for --accelerator before creating anything)
  --module=MODULE        what run starts [VIT_SE_MODULE]: main (default: python -m vit_se.main),
                         kfold (vit_se.kfold), ablation or cross_dataset (python -m
                         vit_se.experiments ablation / cross_dataset); cross_dataset takes its
                         own flags after -- and no --config or --workdir
  --skip-preflight       create: create without compiling --config first
  --workdir=gs://...     run directory [VIT_SE_WORKDIR] (run; gs:// required on multi-host)
  --data_dir=gs://...    tfds data dir, exported as TFDS_DATA_DIR and passed as
                         --config.data_dir [VIT_SE_DATA_DIR] (run)
  --repo=URL             git URL to clone on the workers [VIT_SE_REPO] (install)
  --ref=REF              branch, tag or commit of --repo [VIT_SE_REF] (default: main)
  --remote_dir=DIR       repository directory on the workers, relative to the home directory
                         [VIT_SE_REMOTE_DIR] (default: vit_se)
  --python=PYTHON        interpreter on the workers [VIT_SE_PYTHON] (default: python3); the
                         preflight runs here with VIT_SE_LOCAL_PYTHON (default: python3)
  --worker=W             logs: worker index or 'all' (default: 0)
  --lines=N              logs: lines to print (default: 100)
  --follow               logs: keep following the log
  --yes                  delete: do not ask
  --dry-run              print the commands (one per line, prefixed '+ ') and run nothing
  -h, --help             this help

--config.FIELD=VALUE flags, and anything after --, go to the module unchanged (and to the
preflight of create).
EOF
}

# ---------------------------------------------------------------------------------------------
# Options.

SUBCOMMAND=""
NAME=${TPU_NAME:-vit-se}
ZONE=${ZONE:-}
PROJECT=${PROJECT_ID:-}
ACCELERATOR=${ACCELERATOR_TYPE:-}
VERSION=${RUNTIME_VERSION:-}
WORKERS=""
CONFIG=${VIT_SE_CONFIG:-}
WORKDIR=${VIT_SE_WORKDIR:-}
DATA_DIR=${VIT_SE_DATA_DIR:-}
REPO=${VIT_SE_REPO:-}
REF=${VIT_SE_REF:-main}
REMOTE_DIR=${VIT_SE_REMOTE_DIR:-vit_se}
PYTHON=${VIT_SE_PYTHON:-python3}
LOCAL_PYTHON=${VIT_SE_LOCAL_PYTHON:-python3}
MODULE=${VIT_SE_MODULE:-main}
PREFLIGHT=1
PROVISIONING=""
LOG_WORKER=0
LINES=100
FOLLOW=0
YES=0
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
    --name | --zone | --project | --accelerator | --version | --workers | --config | --workdir | \
      --data_dir | --repo | --ref | --remote_dir | --python | --worker | --lines | --module)
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
    --skip-preflight) PREFLIGHT=0 ;;
    --module) MODULE=$val ;;
    --yes) YES=1 ;;
    --follow) FOLLOW=1 ;;
    --spot | --preemptible) PROVISIONING=$key ;;
    --name) NAME=$val ;;
    --zone) ZONE=$val ;;
    --project) PROJECT=$val ;;
    --accelerator) ACCELERATOR=$val ;;
    --version) VERSION=$val ;;
    --workers) WORKERS=$val ;;
    --config) CONFIG=$val ;;
    --workdir) WORKDIR=$val ;;
    --data_dir) DATA_DIR=$val ;;
    --repo) REPO=$val ;;
    --ref) REF=$val ;;
    --remote_dir) REMOTE_DIR=$val ;;
    --python) PYTHON=$val ;;
    --worker) LOG_WORKER=$val ;;
    --lines) LINES=$val ;;
    --config.*) EXTRA+=("$arg") ;;
    --)
      EXTRA+=("$@")
      break
      ;;
    -*) die "unknown option $arg (see --help)" ;;
    *)
      [[ -z $SUBCOMMAND ]] || die "one subcommand at a time (got '$SUBCOMMAND' and '$arg')"
      SUBCOMMAND=$arg
      ;;
  esac
done

[[ -n $SUBCOMMAND ]] || {
  usage >&2
  exit 2
}
case $SUBCOMMAND in
  create | install | run | logs | stop | status | delete) ;;
  *) die "unknown subcommand '$SUBCOMMAND' (create, install, run, logs, stop, status, delete)" ;;
esac
[[ -n $ZONE ]] || die "--zone (or ZONE) is required, e.g. --zone=us-central2-b"
[[ -n $NAME ]] || die "--name (or TPU_NAME) must not be empty"
[[ -z $WORKERS || $WORKERS =~ ^[1-9][0-9]*$ ]] || die "--workers must be a positive integer"

# The module run starts: python MODULE_ARGV.
module_argv "$MODULE"

GCLOUD_TPU=(gcloud compute tpus tpu-vm)
LOCATION=("--zone=$ZONE")
[[ -z $PROJECT ]] || LOCATION+=("--project=$PROJECT")

# ---------------------------------------------------------------------------------------------
# Accelerator types.

# Sets WORKER_COUNT, DEFAULT_VERSION and TOPOLOGY (a one-line explanation) for $ACCELERATOR.
describe_accelerator() {
  local gen=${ACCELERATOR%-*} n=${ACCELERATOR##*-}
  [[ $ACCELERATOR == *-* && $n =~ ^[1-9][0-9]*$ ]] ||
    die "accelerator type '$ACCELERATOR' is not NAME-N (e.g. v4-32, v5litepod-16)"
  case $gen in
    v2 | v3 | v4 | v5p)
      ((n % 8 == 0)) || die "$ACCELERATOR: $gen sizes count TensorCores in multiples of 8"
      WORKER_COUNT=$((n / 8))
      case $gen in
        v5p) DEFAULT_VERSION=v2-alpha-tpuv5 ;;
        *) DEFAULT_VERSION=tpu-ubuntu2204-base ;;
      esac
      if [[ $gen == v2 || $gen == v3 ]]; then
        TOPOLOGY="$n TensorCores, 8 per host"
      else
        TOPOLOGY="$n TensorCores = $((n / 2)) chips, 4 chips per host"
      fi
      ;;
    v5litepod | v6e)
      if ((n == 1 || n == 4 || n == 8)); then
        WORKER_COUNT=1
        TOPOLOGY="$n chips on one host"
      else
        ((n % 16 == 0)) || die "$ACCELERATOR: $gen slices have 1, 4, 8 or a multiple of 16 chips"
        WORKER_COUNT=$((n / 4))
        TOPOLOGY="$n chips, 4 chips per host"
      fi
      case $gen in
        v6e) DEFAULT_VERSION=v2-alpha-tpuv6e ;;
        *) DEFAULT_VERSION=v2-alpha-tpuv5-lite ;;
      esac
      ;;
    v5e) die "$ACCELERATOR: Cloud TPU names v5e slices v5litepod-N (e.g. v5litepod-$n)" ;;
    *)
      [[ -n $WORKERS ]] ||
        die "unknown accelerator generation '$gen' (known: v2 v3 v4 v5p v5litepod v6e); pass --workers=N and --version"
      WORKER_COUNT=$WORKERS
      DEFAULT_VERSION=""
      TOPOLOGY="worker count from --workers"
      ;;
  esac
  if [[ -n $WORKERS ]]; then
    WORKER_COUNT=$WORKERS
    TOPOLOGY="worker count from --workers"
  fi
}

# Resolves ACCELERATOR (asking gcloud when unset, outside --dry-run) and reports the worker count.
resolve_workers() {
  if [[ -z $ACCELERATOR ]]; then
    if [[ -n $WORKERS ]]; then
      WORKER_COUNT=$WORKERS
      note "TPU $NAME: $WORKER_COUNT workers (from --workers)"
      return
    fi
    ((!DRY_RUN)) || die "--dry-run needs --accelerator (or ACCELERATOR_TYPE): the worker count follows from it"
    ACCELERATOR=$("${GCLOUD_TPU[@]}" describe "$NAME" "${LOCATION[@]}" --format='value(acceleratorType)')
    ACCELERATOR=${ACCELERATOR##*/}
    [[ -n $ACCELERATOR ]] || die "could not read the accelerator type of TPU $NAME in $ZONE"
  fi
  describe_accelerator
  note "TPU $NAME ($ACCELERATOR: $TOPOLOGY): $WORKER_COUNT worker$( ((WORKER_COUNT == 1)) || echo s)"
}

# ---------------------------------------------------------------------------------------------
# Subcommands.

ssh_all() {
  step "${GCLOUD_TPU[@]}" ssh "$NAME" "${LOCATION[@]}" --worker=all --command "$1"
}

# Compiles --config for the accelerator on this machine (vit_se.main --compile_for: the TPU
# compiler from the tpu extra, no TPU needed) and stops here if it does not fit.
preflight() {
  if ((!PREFLIGHT)); then
    note "preflight skipped (--skip-preflight)"
    return
  fi
  if [[ -z $CONFIG ]]; then
    note "no --config: nothing to compile before create (give --config to check that it fits on $ACCELERATOR)"
    return
  fi
  case ${ACCELERATOR%-*} in
    v4 | v5p | v5litepod | v5e | v6e) ;;
    *)
      note "preflight skipped: it knows v4, v5p, v5litepod (v5e) and v6e slices, not $ACCELERATOR"
      return
      ;;
  esac
  local cmd=("$LOCAL_PYTHON" -m vit_se.main "--config=$CONFIG" "--compile_for=$ACCELERATOR")
  [[ -z $DATA_DIR ]] || cmd+=("--config.data_dir=$DATA_DIR")
  cmd+=("${EXTRA[@]}")
  note "preflight: compile $CONFIG for $ACCELERATOR here before creating it (--skip-preflight to skip)"
  local status=0
  step "${cmd[@]}" || status=$?
  ((status == 0)) || {
    echo "$PROG: preflight failed (status $status): $CONFIG does not compile or fit on $ACCELERATOR; nothing was created (--skip-preflight creates it anyway)" >&2
    exit "$status"
  }
}

cmd_create() {
  [[ -n $ACCELERATOR ]] || die "create needs --accelerator (or ACCELERATOR_TYPE), e.g. v4-32"
  resolve_workers
  local version=${VERSION:-$DEFAULT_VERSION}
  [[ -n $version ]] || die "create needs --version for accelerator $ACCELERATOR"
  preflight
  local cmd=("${GCLOUD_TPU[@]}" create "$NAME" "${LOCATION[@]}"
    "--accelerator-type=$ACCELERATOR" "--version=$version")
  [[ -z $PROVISIONING ]] || cmd+=("$PROVISIONING")
  step "${cmd[@]}"
}

cmd_install() {
  if [[ -n $ACCELERATOR || -n $WORKERS ]]; then resolve_workers; fi
  local dir pip
  dir=$(quote "$REMOTE_DIR")
  pip="$(quote "$PYTHON") -m pip"
  local install="cd $dir && $pip install --upgrade pip && $pip install -e \".[tpu]\""
  if [[ -n $REPO ]]; then
    note "install: git clone $REPO at $REF on every worker"
    ssh_all "set -e; [ -d $dir/.git ] || git clone $(quote "$REPO") $dir; git -C $dir fetch origin $(quote "$REF") && git -C $dir checkout --detach FETCH_HEAD && $install"
  else
    # The checkout's own files (tracked and untracked, minus .gitignore'd ones: no venvs, no
    # data, no workdirs), packed once and copied to every worker.
    local tarball=${TMPDIR:-/tmp}/vit_se_src.tar.gz
    note "install: copy this checkout ($ROOT) to every worker"
    local pack
    pack="git -C $(quote "$ROOT") ls-files -z --cached --others --exclude-standard"
    pack+=" | tar -C $(quote "$ROOT") --null -T - -czf $(quote "$tarball")"
    if ((DRY_RUN)); then
      echo "+ $pack"
    else
      echo "+ $pack" >&2
      bash -c "set -o pipefail; $pack"
    fi
    step "${GCLOUD_TPU[@]}" scp "$tarball" "$NAME:vit_se_src.tar.gz" "${LOCATION[@]}" --worker=all
    ssh_all "set -e; mkdir -p $dir && tar -xzf vit_se_src.tar.gz -C $dir && $install"
  fi
}

cmd_run() {
  local cross=0
  [[ ${MODULE_ARGV[*]} != *cross_dataset ]] || cross=1
  if ((!cross)); then
    [[ -n $CONFIG || (${MODULE_ARGV[*]} == *kfold && " ${EXTRA[*]} " == *" --aggregate_only "*) ]] ||
      die "run needs --config (or VIT_SE_CONFIG), e.g. --config=configs/raf_db.py"
    [[ -n $WORKDIR ]] || die "run needs --workdir (or VIT_SE_WORKDIR), e.g. --workdir=gs://BUCKET/runs/raf_db"
  fi
  resolve_workers
  if ((WORKER_COUNT > 1)) && [[ -n $WORKDIR && $WORKDIR != gs://* ]]; then
    die "--workdir=$WORKDIR is a local path, but $NAME has $WORKER_COUNT workers: use a gs:// path (every worker must write the same checkpoints)"
  fi
  if ((WORKER_COUNT > 1)) && [[ -n $DATA_DIR && $DATA_DIR != gs://* ]]; then
    note "warning: --data_dir=$DATA_DIR is local: every worker then needs its own prepared copy (or the manual files to build one)"
  fi
  local main=("$PYTHON" "${MODULE_ARGV[@]}")
  [[ -z $CONFIG ]] || main+=("--config=$CONFIG")
  [[ -z $WORKDIR ]] || main+=("--workdir=$WORKDIR")
  local env="PYTHONUNBUFFERED=1"
  if [[ -n $DATA_DIR ]]; then
    env+=" TFDS_DATA_DIR=$(quote "$DATA_DIR")"
    if ((cross)); then main+=("--data_dir=$DATA_DIR"); else main+=("--config.data_dir=$DATA_DIR"); fi
  fi
  main+=("${EXTRA[@]}")
  note "run: $(quote_all "${main[@]}") on every worker; log: ~/vit_se_run.log on each"
  # Worker hostnames end in -w-INDEX, so the prefix tells the workers apart in the stream.
  ssh_all "set -o pipefail; (cd $(quote "$REMOTE_DIR") && exec env $env $(quote_all "${main[@]}")) 2>&1 | tee -a vit_se_run.log | sed -u \"s/^/[\$(hostname)] /\""
}

cmd_logs() {
  [[ $LOG_WORKER == all || $LOG_WORKER =~ ^[0-9]+$ ]] || die "--worker must be an index or 'all'"
  [[ $LINES =~ ^[0-9]+$ ]] || die "--lines must be a number"
  local tail_cmd="tail -n $LINES"
  ((!FOLLOW)) || tail_cmd+=" -F"
  step "${GCLOUD_TPU[@]}" ssh "$NAME" "${LOCATION[@]}" "--worker=$LOG_WORKER" \
    --command "$tail_cmd vit_se_run.log | sed \"s/^/[\$(hostname)] /\""
}

cmd_stop() {
  # Every module run starts (main, kfold, experiments) stops the same way.
  ssh_all "pkill -INT -f \"vit_se[.](main|kfold|experiments)\" && echo \"\$(hostname): interrupted the run\" || echo \"\$(hostname): no vit_se run running\""
}

cmd_status() {
  step "${GCLOUD_TPU[@]}" describe "$NAME" "${LOCATION[@]}" \
    --format 'yaml(state,health,acceleratorType,runtimeVersion,schedulingConfig,networkEndpoints)'
}

cmd_delete() {
  if ((!DRY_RUN && !YES)); then
    local answer=""
    read -r -p "Delete TPU $NAME in $ZONE${PROJECT:+ (project $PROJECT)}? Its local disks are lost. [y/N] " answer || true
    [[ $answer == [yY] || $answer == [yY][eE][sS] ]] || {
      echo "$PROG: not deleted" >&2
      exit 1
    }
  fi
  step "${GCLOUD_TPU[@]}" delete "$NAME" "${LOCATION[@]}" --quiet
}

"cmd_$SUBCOMMAND"
