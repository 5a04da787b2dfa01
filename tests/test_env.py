"""Process-level settings: XLA:CPU default flags and the jemalloc restart of entry points."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from jaxmodels import _env
from jaxmodels.train import perf

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_cpu_flags_are_added_once_and_a_users_flag_wins(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
  monkeypatch.delenv("JAXMODELS_XLA_DEFAULTS", raising=False)
  _env.configure_xla_cpu()
  _env.configure_xla_cpu()
  flags = os.environ["XLA_FLAGS"].split()
  assert flags[0] == "--xla_force_host_platform_device_count=8"
  assert flags[1:] == list(_env.CPU_FLAGS)
  mine = "--xla_cpu_experimental_ynn_fusion_type=-individual_dot"
  monkeypatch.setenv("XLA_FLAGS", mine)
  _env.configure_xla_cpu()
  flags = os.environ["XLA_FLAGS"].split()
  assert flags[0] == mine and len(flags) == len(_env.CPU_FLAGS)
  assert not any(f.startswith("--xla_cpu_experimental_ynn_fusion_type") for f in flags[1:])


def test_cpu_flags_can_be_turned_off(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "")
  monkeypatch.setenv("JAXMODELS_XLA_DEFAULTS", "0")
  _env.configure_xla_cpu()
  assert os.environ["XLA_FLAGS"] == ""


def test_this_process_runs_with_the_default_flags():
  # conftest set the device count and, as an entry point, the defaults before jax started.
  for flag in _env.CPU_FLAGS:
    assert flag in os.environ["XLA_FLAGS"]


def test_importing_the_package_leaves_the_environment_alone():
  code = (
      "import os, jaxmodels, jaxmodels.models, jaxmodels.train.loop, jaxmodels.data, "
      "jaxmodels.tasks; print(repr(os.environ.get('XLA_FLAGS')))"
  )
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAXMODELS_HOST_DEVICES")}
  out = subprocess.run(
      [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
  ).stdout
  assert out.strip() == "None"


def _experiment(workdir, *flags, **env):
  base = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAXMODELS_HOST_DEVICES")}
  command = [sys.executable, "-m", "experiments.digits_mlp", f"--workdir={workdir}"]
  command += ["--config.synthetic_data=True", "--config.num_train_steps=2", *flags]
  return subprocess.run(
      command, cwd=ROOT, env=dict(base, **env), capture_output=True, text=True, timeout=300
  )


def test_the_default_host_split_divides_the_batch(tmp_path):
  # A batch of 3 on a 2-core machine: one device per core would not divide it.
  proc = _experiment(tmp_path, "--config.batch_size=3", "--config.eval_batch_size=3")
  assert proc.returncode == 0, proc.stderr
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert 3 % summary["num_devices"] == 0
  if _env.usable_cpus() > summary["num_devices"]:
    assert "the largest count that divides the batch sizes [3]" in proc.stderr


@pytest.mark.parametrize("value", ["0", "-2", "abc"])
def test_a_bad_host_device_count_is_an_error_naming_the_variable(tmp_path, value):
  proc = _experiment(tmp_path, JAXMODELS_HOST_DEVICES=value)
  assert proc.returncode == 2
  assert f"error: JAXMODELS_HOST_DEVICES={value!r}: give a positive number" in proc.stderr
  assert not (tmp_path / "checkpoints").exists()


def test_host_device_count_takes_the_largest_divisor_of_every_batch():
  assert _env.host_device_count(None, 2, [128, 128]) == 2
  assert _env.host_device_count(None, 6, [128]) == 4
  assert _env.host_device_count(None, 12, [128, 64]) == 8
  assert _env.host_device_count(None, 24, [128, 100]) == 4
  assert _env.host_device_count(None, 3, [100]) == 2
  assert _env.host_device_count(None, 7, []) == 7
  assert _env.host_device_count("3", 2, [128]) == 3  # the user's choice stands


def test_usable_cpus_reads_a_cgroup_quota(tmp_path, monkeypatch):
  quota = tmp_path / "cpu.max"
  quota.write_text("150000 100000\n")
  assert _env._cgroup_cpu_quota(str(quota)) == 2
  quota.write_text("max 100000\n")
  assert _env._cgroup_cpu_quota(str(quota)) is None
  assert _env._cgroup_cpu_quota(str(tmp_path / "missing")) is None
  monkeypatch.setattr(_env, "_cgroup_cpu_quota", lambda path: 1)
  assert _env.usable_cpus() == 1


def test_configure_process_splits_the_host_and_adds_the_defaults(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "")
  monkeypatch.setenv("JAXMODELS_HOST_DEVICES", "3")
  monkeypatch.delenv("JAXMODELS_XLA_DEFAULTS", raising=False)
  monkeypatch.setattr(_env, "_backends_ready", lambda: False)
  _env.configure_process()
  flags = os.environ["XLA_FLAGS"].split()
  assert flags == ["--xla_force_host_platform_device_count=3", *_env.CPU_FLAGS]


def test_allocator_env(monkeypatch):
  monkeypatch.setattr(_env, "find_jemalloc", lambda: "/lib/libjemalloc.so.2")
  env = _env.allocator_env({"PATH": "/bin", "LD_PRELOAD": "/lib/other.so"})
  assert env["LD_PRELOAD"] == "/lib/libjemalloc.so.2 /lib/other.so"
  assert env["MALLOC_CONF"] == "dirty_decay_ms:-1,muzzy_decay_ms:-1" and env["PATH"] == "/bin"
  assert _env.allocator_env({"MALLOC_CONF": "narenas:2"})["MALLOC_CONF"] == "narenas:2"
  assert _env.allocator_env(env) is None  # already restarted: no loop
  assert _env.allocator_env({"JAXMODELS_ALLOCATOR": "system"}) is None
  monkeypatch.setattr(_env, "find_jemalloc", lambda: None)
  assert _env.allocator_env({}) is None
  with pytest.raises(ValueError, match="JAXMODELS_ALLOCATOR='tcmalloc'.*'jemalloc' and 'system'"):
    _env.allocator_env({"JAXMODELS_ALLOCATOR": "tcmalloc"})


_REPORT = (
    "from jaxmodels import _env; _env.restart_with_allocator(); import os, sys; "
    "maps = open('/proc/self/maps').read(); "
    "print('jemalloc' if 'libjemalloc' in maps else 'system', sys.argv[1:])"
)


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or _env.find_jemalloc() is None,
    reason="needs Linux with jemalloc installed (make jemalloc)",
)
@pytest.mark.parametrize("choice", ["jemalloc", "system"])
def test_entry_point_restarts_under_jemalloc_with_its_arguments(choice):
  env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
  env["JAXMODELS_ALLOCATOR"] = choice
  out = subprocess.run(
      [sys.executable, "-c", _REPORT, "--a=1", "b"],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      check=True,
      timeout=120,
  ).stdout
  assert out.strip() == f"{choice} ['--a=1', 'b']"


def test_bad_allocator_choice_is_a_clear_error(tmp_path):
  env = dict(os.environ, JAXMODELS_ALLOCATOR="tcmalloc")
  workdir = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.digits_mlp", f"--workdir={workdir}"],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert proc.returncode == 2
  assert "JAXMODELS_ALLOCATOR='tcmalloc': valid values are 'jemalloc' and 'system'" in proc.stderr
  assert not workdir.exists()


def test_process_age_reads_the_start_field_after_the_command_name():
  # /proc/<pid>/stat: pid (comm) state ppid ...; field 22 is the start in ticks after boot.
  fields = ["S"] + ["0"] * 18 + ["250"] + ["7"] * 10
  stat = "42 (python -m x) " + " ".join(fields)
  assert perf.process_age_s(stat, "12.50 3.00\n", 100) == pytest.approx(10.0)


def test_process_start_time_is_before_this_process_ran_python(tmp_path):
  code = (
      "import time; t = time.time(); time.sleep(0.3); from jaxmodels.train import perf; "
      "print(t - perf.process_start_time())"
  )
  out = subprocess.run(
      [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
  ).stdout
  assert 0 <= float(out) < 60  # the interpreter started before its first statement


_PACKAGE_INIT = "from jaxmodels import _env\n_env.restart_before_imports(__name__)\n"
_MODULE = (
    "import os, sys\n"
    "open(os.environ['MARKER'], 'a').write('ran\\n')\n"
    "from jaxmodels import _env\n"
    "_env.restart_with_allocator()\n"
    "maps = open('/proc/self/maps').read()\n"
    "print('jemalloc' if 'libjemalloc' in maps else 'system', sys.argv[1:])\n"
)


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or _env.find_jemalloc() is None,
    reason="needs Linux with jemalloc installed (make jemalloc)",
)
def test_python_m_restarts_in_the_package_before_the_module_runs(tmp_path):
  (tmp_path / "pkg").mkdir()
  (tmp_path / "pkg" / "__init__.py").write_text(_PACKAGE_INIT)
  (tmp_path / "pkg" / "mod.py").write_text(_MODULE)
  env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
  env.update(PYTHONPATH=f"{tmp_path}:{ROOT}", MARKER=str(tmp_path / "marker"))
  env.pop(_env.ALLOCATOR_ENV, None)

  def run(*argv):
    return subprocess.run(
        [sys.executable, *argv], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    ).stdout.strip()

  assert run("-m", "pkg.mod", "--a=1") == "jemalloc ['--a=1']"
  # The module body ran once: the restart came before it, not after its imports.
  assert (tmp_path / "marker").read_text() == "ran\n"
  # Imported from elsewhere, the package leaves the process alone.
  assert run("-c", "import pkg; import os; print(os.environ.get('LD_PRELOAD', ''))") == ""
