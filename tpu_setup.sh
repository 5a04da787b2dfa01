#!/usr/bin/env bash
# Cloud TPU life cycle for jaxmodels: create a TPU VM, put the code on every
# worker, run an experiment on all workers at once, open a shell or a
# TensorBoard, delete the VM. Every cloud call goes through gcloud; --dry-run
# prints those calls instead of making them. Run ./tpu_setup.sh --help.
#
# Commands for the workers are built here as text and run there by bash (the
# login shell gcloud gives TPU VM users), so $ in single quotes is meant.
# shellcheck disable=SC2016
set -euo pipefail

PROG=${0##*/}
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SUBCOMMANDS="create setup run ssh tensorboard delete"
REMOTE_TARBALL=jaxmodels-src.tar.gz

usage() {
  cat <<EOF
Usage: $PROG <create|setup|run|ssh|tensorboard|delete> [options] [-- ...]

Subcommands:
  create        create the TPU VM (single host or pod slice); with
                --preflight=MODULE, first compile MODULE's train step for
                --accelerator-type on this machine and stop if it does not
                fit (flags after -- go to the experiment):
                  $PROG create --accelerator-type=v4-128 \\
                    --preflight=experiments.gpt3 -- --config.fsdp=64
  setup         copy the code to every worker (or git clone --repo there),
                make a virtual environment, pip install -e '.[tpu]'
  run           run one experiment on all workers at once:
                  $PROG run --workdir=gs://BUCKET/run1 -- \\
                    experiments.fashion_mnist_cnn --config.batch_size=1024
                runs 'python -m MODULE --workdir=WORKDIR FLAGS...' in the
                virtual environment on every worker, with TFDS_DATA_DIR set,
                output appended to a log file on each worker
  ssh           open a shell on a worker, or run --command there; arguments
                after -- go to ssh
  tensorboard   start TensorBoard on worker 0 for --workdir and forward it to
                http://localhost:PORT
  delete        delete the TPU VM (no confirmation prompt)

Settings (flag, then environment variable, then default):
  --project=ID             \$TPU_PROJECT, else gcloud's default project
  --zone=ZONE              \$TPU_ZONE (required), e.g. us-central2-b
  --name=NAME              \$TPU_NAME (required)
  --accelerator-type=TYPE  \$TPU_TYPE (create), e.g. v4-8 or v4-32
  --version=RUNTIME        \$TPU_VERSION (create), a TPU VM runtime such as
                           tpu-ubuntu2204-base
  --spot | --preemptible   create a Spot (or preemptible) TPU VM
  --preflight=MODULE       create: run 'python -m jaxmodels.aot MODULE
                           --topology=TYPE FLAGS...' here first (libtpu, no
                           TPU needed); its failure stops the create
  --preflight-python=PY    \$TPU_PREFLIGHT_PYTHON, the interpreter for
                           --preflight (default: .venv/bin/python next to
                           this script, else python3)
  --repo=URL               \$TPU_REPO: setup git-clones URL on every worker
  --branch=BRANCH          branch or tag for --repo
  --source=PATH            setup copies this checkout directory or tarball
                           (default: the checkout holding this script)
  --remote-dir=DIR         \$TPU_REMOTE_DIR, code directory on the workers,
                           relative to home (default: jaxmodels)
  --python=PYTHON          \$TPU_PYTHON, the interpreter for the virtual
                           environment (default: the newest python3.11+
                           found, else apt-get install python3.11)
  --prepare=DATASETS       setup: also prepare these datasets (comma list of
                           names python -m jaxmodels.data.prepare takes,
                           checked here first) on every worker into the data dir
  --data-dir=DIR           \$TPU_DATA_DIR, TFDS_DATA_DIR on the workers
                           (default: ~/tensorflow_datasets)
  --workdir=DIR            \$TPU_WORKDIR (run, tensorboard), e.g. gs://b/run1
  --log=FILE               run: log file on each worker, relative to the
                           code directory (default: logs/MODULE.log)
  --background             run: start the job with nohup and return
  --worker=W               ssh: worker index, list or 'all' (default: 0)
  --command=CMD            ssh: run CMD instead of an interactive shell
  --port=PORT              tensorboard: port (default: 6006)
  --dry-run                print every command instead of running it
  -h, --help               show this help

Relative paths on the workers (--data-dir, --workdir, --log) are relative
to the code directory; ~/ means the worker's home directory.
Exit status: 2 for a usage error (nothing is run); otherwise the exit
status of the first command that failed.
EOF
}

die_usage() {
  echo "$PROG${SUBCOMMAND:+ $SUBCOMMAND}: $*" >&2
  echo "Run '$PROG --help' for usage." >&2
  exit 2
}

# Quotes one word for display so that the printed line can be pasted into a
# shell; plain words stay bare.
show_word() {
  local word=$1
  if [[ -n $word && $word =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$word"
  else
    printf "'%s'" "${word//\'/\'\\\'\'}"
  fi
}

show_cmd() {
  local out="" word
  for word in "$@"; do
    out+="${out:+ }$(show_word "$word")"
  done
  printf '%s\n' "$out"
}

# Runs a command, or prints it under --dry-run. A failing command stops the
# script with that command's exit status.
run_cmd() {
  if ((DRY_RUN)); then
    show_cmd "$@"
    return 0
  fi
  echo "+ $(show_cmd "$@")" >&2
  local status=0
  "$@" || status=$?
  if ((status != 0)); then
    echo "$PROG $SUBCOMMAND: '$(show_cmd "${@:1:5}") ...' failed with exit status $status" >&2
    exit "$status"
  fi
}

# Quotes a path for the worker's bash with printf %q; a leading ~/ becomes
# "$HOME"/ so that it expands in any position, e.g. after --flag=.
remote_path() {
  local path=$1
  if [[ $path == \~ ]]; then
    printf '"$HOME"'
  elif [[ $path == \~/* ]]; then
    printf '"$HOME"/%q' "${path#\~/}"
  else
    printf '%q' "$path"
  fi
}

set_option() {
  local name=$1 value=$2
  case $name in
    --project) OPT_PROJECT=$value ;;
    --zone) OPT_ZONE=$value ;;
    --name) OPT_NAME=$value ;;
    --accelerator-type) OPT_TYPE=$value ;;
    --version) OPT_VERSION=$value ;;
    --preflight) OPT_PREFLIGHT=$value ;;
    --preflight-python) OPT_PREFLIGHT_PYTHON=$value ;;
    --repo) OPT_REPO=$value ;;
    --branch) OPT_BRANCH=$value ;;
    --source) OPT_SOURCE=$value ;;
    --remote-dir) OPT_REMOTE_DIR=$value ;;
    --python) OPT_PYTHON=$value ;;
    --prepare) OPT_PREPARE=$value ;;
    --data-dir) OPT_DATA_DIR=$value ;;
    --workdir) OPT_WORKDIR=$value ;;
    --log) OPT_LOG=$value ;;
    --worker) OPT_WORKER=$value ;;
    --command) OPT_COMMAND=$value; HAVE_COMMAND=1 ;;
    --port) OPT_PORT=$value ;;
    *) die_usage "unknown option: $name" ;;
  esac
}

parse_args() {
  while (($#)); do
    case $1 in
      -h | --help | help) usage; exit 0 ;;
      --dry-run) DRY_RUN=1 ;;
      --spot) SPOT=1 ;;
      --preemptible) PREEMPTIBLE=1 ;;
      --background) BACKGROUND=1 ;;
      --) shift; EXTRA=("$@"); return 0 ;;
      --*=*) set_option "${1%%=*}" "${1#*=}" ;;
      --project | --zone | --name | --accelerator-type | --version | --repo | \
        --preflight | --preflight-python | \
        --branch | --source | --remote-dir | --python | --prepare | \
        --data-dir | --workdir | --log | --worker | --command | --port)
        (($# >= 2)) || die_usage "option $1 needs a value"
        set_option "$1" "$2"
        shift ;;
      -*) die_usage "unknown option: $1" ;;
      *)
        [[ -z $SUBCOMMAND ]] || die_usage "unexpected argument '$1' (experiment flags go after --)"
        SUBCOMMAND=$1 ;;
    esac
    shift
  done
}

# Resolves every setting from its flag, then its environment variable.
resolve_settings() {
  PROJECT=${OPT_PROJECT:-${TPU_PROJECT:-}}
  ZONE=${OPT_ZONE:-${TPU_ZONE:-}}
  NAME=${OPT_NAME:-${TPU_NAME:-}}
  ACCELERATOR_TYPE=${OPT_TYPE:-${TPU_TYPE:-}}
  VERSION=${OPT_VERSION:-${TPU_VERSION:-}}
  REPO=${OPT_REPO:-${TPU_REPO:-}}
  REMOTE_DIR=${OPT_REMOTE_DIR:-${TPU_REMOTE_DIR:-jaxmodels}}
  PYTHON=${OPT_PYTHON:-${TPU_PYTHON:-}}
  DATA_DIR=${OPT_DATA_DIR:-${TPU_DATA_DIR:-"~/tensorflow_datasets"}}
  WORKDIR=${OPT_WORKDIR:-${TPU_WORKDIR:-}}
  PREFLIGHT_PYTHON=${OPT_PREFLIGHT_PYTHON:-${TPU_PREFLIGHT_PYTHON:-}}
  if [[ -z $PREFLIGHT_PYTHON ]]; then
    PREFLIGHT_PYTHON=python3
    [[ ! -x $SCRIPT_DIR/.venv/bin/python ]] || PREFLIGHT_PYTHON=$SCRIPT_DIR/.venv/bin/python
  fi
}

require() {
  local value=$1 flag=$2 env=$3
  [[ -n $value ]] || die_usage "missing setting $flag (or set \$$env)"
}

validate() {
  [[ -n $SUBCOMMAND ]] || die_usage "missing subcommand (one of: $SUBCOMMANDS)"
  [[ " $SUBCOMMANDS " == *" $SUBCOMMAND "* ]] ||
    die_usage "unknown subcommand '$SUBCOMMAND' (one of: $SUBCOMMANDS)"
  require "$ZONE" --zone TPU_ZONE
  require "$NAME" --name TPU_NAME
  local takes_extra=0
  [[ $SUBCOMMAND != run && $SUBCOMMAND != ssh ]] || takes_extra=1
  [[ $SUBCOMMAND != create || -z $OPT_PREFLIGHT ]] || takes_extra=1
  if ((!takes_extra && ${#EXTRA[@]} > 0)); then
    die_usage "unexpected arguments after --: ${EXTRA[*]}"
  fi
  case $SUBCOMMAND in
    create) validate_create ;;
    setup) validate_setup ;;
    run) validate_run ;;
    ssh) validate_ssh ;;
    tensorboard) validate_tensorboard ;;
  esac
}

validate_create() {
  require "$ACCELERATOR_TYPE" --accelerator-type TPU_TYPE
  require "$VERSION" --version TPU_VERSION
  ! ((SPOT && PREEMPTIBLE)) || die_usage "choose one of --spot and --preemptible"
  [[ -z $OPT_PREFLIGHT || $OPT_PREFLIGHT =~ ^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$ ]] ||
    die_usage "--preflight '$OPT_PREFLIGHT' is not a Python module name (e.g. experiments.gpt3)"
}

validate_setup() {
  [[ -z $REPO || -z $OPT_SOURCE ]] || die_usage "choose one of --repo and --source"
  if [[ -z $REPO ]]; then
    SOURCE=${OPT_SOURCE:-$SCRIPT_DIR}
    [[ -e $SOURCE ]] || die_usage "--source $SOURCE does not exist"
    [[ ! -d $SOURCE || -f $SOURCE/pyproject.toml ]] ||
      die_usage "--source $SOURCE is not a checkout (no pyproject.toml there)"
  fi
  [[ -z $OPT_PREPARE || $OPT_PREPARE =~ ^[A-Za-z0-9_]+(,[A-Za-z0-9_]+)*$ ]] ||
    die_usage "--prepare takes a comma-separated list of dataset names, got '$OPT_PREPARE'"
  [[ -z $OPT_PREPARE ]] || validate_datasets
}

# The names 'python -m jaxmodels.data.prepare' takes: a module per dataset in
# jaxmodels/data/sets/ of the checkout holding this script, all and offline.
known_datasets() {
  local file names=()
  for file in "$SCRIPT_DIR"/jaxmodels/data/sets/*.py; do
    file=${file##*/}
    [[ $file == __init__.py || $file == "*.py" ]] || names+=("${file%.py}")
  done
  ((${#names[@]} == 0)) || printf '%s\n' "${names[@]}" all offline
}

# Refuses a misspelt --prepare name here, before anything is made on the cloud
# (skipped when this script stands outside a checkout).
validate_datasets() {
  local known dataset datasets=()
  known=$(known_datasets | tr '\n' ' ')
  [[ -n $known ]] || return 0
  IFS=, read -r -a datasets <<<"$OPT_PREPARE"
  for dataset in "${datasets[@]}"; do
    [[ " $known" == *" $dataset "* ]] ||
      die_usage "--prepare: unknown dataset '$dataset'; valid: ${known% }"
  done
}

validate_run() {
  require "$WORKDIR" --workdir TPU_WORKDIR
  ((${#EXTRA[@]} > 0)) ||
    die_usage "missing experiment module: $PROG run --workdir=DIR -- experiments.NAME [FLAGS...]"
  [[ ${EXTRA[0]} =~ ^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$ ]] ||
    die_usage "'${EXTRA[0]}' is not a Python module name (e.g. experiments.fashion_mnist_cnn)"
}

validate_ssh() {
  [[ $OPT_WORKER =~ ^(all|[0-9]+(,[0-9]+)*)$ ]] ||
    die_usage "--worker must be 'all' or worker indices such as 0 or 0,1, got '$OPT_WORKER'"
  [[ $OPT_WORKER =~ ^[0-9]+$ || $HAVE_COMMAND == 1 ]] ||
    die_usage "an interactive shell needs a single --worker; give --command to reach several"
}

validate_tensorboard() {
  require "$WORKDIR" --workdir TPU_WORKDIR
  [[ $OPT_PORT =~ ^[0-9]+$ ]] || die_usage "--port must be a number, got '$OPT_PORT'"
}

# gcloud arguments shared by every subcommand.
location_args() {
  LOCATION=(--zone="$ZONE")
  [[ -z $PROJECT ]] || LOCATION+=(--project="$PROJECT")
}

tpu_ssh() {
  local worker=$1 command=$2
  shift 2
  run_cmd gcloud compute tpus tpu-vm ssh "$NAME" "${LOCATION[@]}" \
    --worker="$worker" --command="$command" "$@"
}

# Compiles the experiment's train step for the accelerator type on this
# machine (python -m jaxmodels.aot); a step that does not fit stops here.
preflight() {
  (
    cd "$SCRIPT_DIR"
    run_cmd "$PREFLIGHT_PYTHON" -m jaxmodels.aot "$OPT_PREFLIGHT" \
      --topology="$ACCELERATOR_TYPE" "${EXTRA[@]}"
  )
}

cmd_create() {
  [[ -z $OPT_PREFLIGHT ]] || preflight
  local args=(--accelerator-type="$ACCELERATOR_TYPE" --version="$VERSION")
  if ((SPOT)); then args+=(--spot); fi
  if ((PREEMPTIBLE)); then args+=(--preemptible); fi
  run_cmd gcloud compute tpus tpu-vm create "$NAME" "${LOCATION[@]}" "${args[@]}"
}

cmd_delete() {
  run_cmd gcloud compute tpus tpu-vm delete "$NAME" "${LOCATION[@]}" --quiet
}

# Packs a checkout directory into a tarball, leaving out environments,
# caches, git history and run outputs.
pack_source() {
  local dir=$1 out=$2
  run_cmd env COPYFILE_DISABLE=1 tar -czf "$out" \
    --exclude=.git --exclude=.venv --exclude=__pycache__ --exclude='*.egg-info' \
    --exclude=.pytest_cache --exclude=.jax_cache --exclude=./runs --exclude=./data \
    -C "$dir" .
}

# Puts the tarball (packed from a directory if needed) in every worker's home.
copy_source() {
  local tarball=$SOURCE
  if [[ -d $SOURCE ]]; then
    if ((DRY_RUN)); then
      tarball=${TMPDIR:-/tmp}/$REMOTE_TARBALL
    else
      tarball=$(mktemp "${TMPDIR:-/tmp}/jaxmodels-src.XXXXXX")
      TEMP_FILE=$tarball
      trap 'rm -f "$TEMP_FILE"' EXIT
    fi
    pack_source "$SOURCE" "$tarball"
  fi
  run_cmd gcloud compute tpus tpu-vm scp "$tarball" "$NAME:$REMOTE_TARBALL" \
    "${LOCATION[@]}" --worker=all
}

# Shell statements that bring the code to a worker.
fetch_statements() {
  local dir
  dir=$(remote_path "$REMOTE_DIR")
  if [[ -n $REPO ]]; then
    local branch=""
    [[ -z $OPT_BRANCH ]] || branch="--branch $(printf %q "$OPT_BRANCH") "
    printf '%s\n' "if [ -d $dir/.git ]; then git -C $dir pull --ff-only; else git clone $branch$(printf %q "$REPO") $dir; fi"
  else
    printf '%s\n' "mkdir -p $dir" "tar -xzf $REMOTE_TARBALL -C $dir" "rm -f $REMOTE_TARBALL"
  fi
}

# Shell statements that pick a Python 3.11+ on a worker, installing one with
# apt-get when the image has none (Ubuntu 22.04 images ship 3.10).
python_statements() {
  local apt='sudo apt-get -q -o DPkg::Lock::Timeout=600'
  if [[ -n $PYTHON ]]; then
    printf '%s\n' "PY=$(printf %q "$PYTHON")"
  else
    printf '%s\n' \
      'PY=; for c in python3.13 python3.12 python3.11 python3; do if command -v "$c" >/dev/null && "$c" -c "import sys; sys.exit(sys.version_info < (3, 11))"; then PY=$c; break; fi; done' \
      "if [ -z \"\$PY\" ]; then $apt update && $apt install -y python3.11 python3.11-venv; PY=python3.11; fi"
  fi
  printf '%s\n' "if ! \"\$PY\" -c 'import ensurepip' >/dev/null 2>&1; then $apt update && $apt install -y \"\$PY-venv\"; fi"
}

setup_statements() {
  local data_dir dataset
  data_dir=$(remote_path "$DATA_DIR")
  echo 'set -euo pipefail'
  fetch_statements
  echo "cd $(remote_path "$REMOTE_DIR")"
  python_statements
  echo '"$PY" -m venv .venv'
  echo '.venv/bin/python -m pip install -q --upgrade pip'
  echo ".venv/bin/python -m pip install -q -e '.[tpu]' tensorboard"
  local datasets=()
  [[ -z $OPT_PREPARE ]] || IFS=, read -r -a datasets <<<"$OPT_PREPARE"
  for dataset in "${datasets[@]}"; do
    echo "TFDS_DATA_DIR=$data_dir .venv/bin/python -m jaxmodels.data.prepare $dataset --data_dir=$data_dir"
  done
}

# Joins statements (one per line on stdin) into one line for ssh --command.
join_statements() {
  local line out=""
  while IFS= read -r line; do
    out+="${out:+; }$line"
  done
  printf '%s' "$out"
}

cmd_setup() {
  [[ -n $REPO ]] || copy_source
  tpu_ssh all "$(setup_statements | join_statements)"
}

# The experiment's command line, every word quoted with printf %q so that
# spaces and quotes in flag values reach Python intact.
experiment_words() {
  local module=${EXTRA[0]} arg out
  out="python -m $module --workdir=$(remote_path "$WORKDIR")"
  for arg in "${EXTRA[@]:1}"; do
    out+=" $(printf %q "$arg")"
  done
  printf '%s' "$out"
}

run_statements() {
  local log=${OPT_LOG:-logs/${EXTRA[0]}.log} log_q
  log_q=$(remote_path "$log")
  echo 'set -euo pipefail'
  echo "cd $(remote_path "$REMOTE_DIR")"
  echo 'export VIRTUAL_ENV="$PWD/.venv" PATH="$PWD/.venv/bin:$PATH" PYTHONUNBUFFERED=1'
  echo "export TFDS_DATA_DIR=$(remote_path "$DATA_DIR")"
  echo "mkdir -p \"\$(dirname $log_q)\""
  if ((BACKGROUND)); then
    echo "nohup $(experiment_words) >>$log_q 2>&1 </dev/null & echo \$! >$log_q.pid"
    echo "echo \"\$(hostname): started pid \$!, log \$PWD/$log_q\""
  else
    echo "$(experiment_words) 2>&1 | tee -a $log_q"
  fi
}

cmd_run() {
  tpu_ssh all "$(run_statements | join_statements)"
}

cmd_ssh() {
  local args=(gcloud compute tpus tpu-vm ssh "$NAME" "${LOCATION[@]}" --worker="$OPT_WORKER")
  if ((HAVE_COMMAND)); then args+=(--command="$OPT_COMMAND"); fi
  if ((${#EXTRA[@]} > 0)); then args+=(-- "${EXTRA[@]}"); fi
  run_cmd "${args[@]}"
}

cmd_tensorboard() {
  local port=$OPT_PORT command
  command="cd $(remote_path "$REMOTE_DIR") && .venv/bin/tensorboard --logdir=$(remote_path "$WORKDIR") --host=localhost --port=$port"
  ((DRY_RUN)) || echo "$PROG: TensorBoard will be at http://localhost:$port (Ctrl-C stops it)" >&2
  tpu_ssh 0 "$command" -- -L "$port:localhost:$port"
}

main() {
  SUBCOMMAND="" DRY_RUN=0 SPOT=0 PREEMPTIBLE=0 BACKGROUND=0 HAVE_COMMAND=0
  OPT_PROJECT="" OPT_ZONE="" OPT_NAME="" OPT_TYPE="" OPT_VERSION="" OPT_REPO=""
  OPT_BRANCH="" OPT_SOURCE="" OPT_REMOTE_DIR="" OPT_PYTHON="" OPT_PREPARE=""
  OPT_DATA_DIR="" OPT_WORKDIR="" OPT_LOG="" OPT_WORKER=0 OPT_COMMAND="" OPT_PORT=6006
  OPT_PREFLIGHT="" OPT_PREFLIGHT_PYTHON=""
  EXTRA=() TEMP_FILE="" SOURCE=""
  parse_args "$@"
  resolve_settings
  validate
  location_args
  "cmd_$SUBCOMMAND"
}

main "$@"
