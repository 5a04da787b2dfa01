"""python -m jaxmodels.aot: the engine's mesh step compiled for TPU topologies (libtpu, no TPU)."""

import json
import os
import subprocess
import sys

import pytest

from jaxmodels import aot, tpu

libtpu = pytest.importorskip("libtpu", reason="the tpu extra (libtpu) compiles for TPU topologies")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENT = "experiments.shakespeare_gpt"
# A small GPT whose every parameter dimension divides by 4.
SMALL = [
    "--config.batch_size=8",
    "--config.block_size=32",
    "--config.model.model_dim=64",
    "--config.model.num_layers=1",
    "--config.model.num_heads=4",
    "--config.model.mlp_dim=128",
]
JSON_KEYS = {
    "topology",
    "num_devices",
    "mesh",
    "num_params",
    "bytes_per_device",
    "hbm_bytes_per_device",
    "fits",
    "flops_per_step",
    "est_step_s",
    "est_mfu",
}


@pytest.fixture(scope="module")
def v5e_report(tmp_path_factory):
  """One compile for v5e:2x2 with the state sharded four ways, shared by the tests below."""
  path = tmp_path_factory.mktemp("aot") / "report.json"
  argv = ["aot", EXPERIMENT, "--topology=v5e:2x2", "--config.fsdp=4", f"--json={path}", *SMALL]
  aot.main(argv)
  return json.loads(path.read_text())


def test_small_gpt_fits_on_v5e_and_the_state_is_sharded_four_ways(v5e_report):
  r = v5e_report
  assert r["num_devices"] == 4 and r["fits"]
  assert r["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
  params_bytes = 4 * r["num_params"]  # float32
  assert r["memory_per_device"]["parameters"] == params_bytes // 4
  # Adam's two moments, sharded like the parameters.
  assert r["memory_per_device"]["optimizer_state"] >= 2 * params_bytes // 4
  assert 0 < r["bytes_per_device"] < r["hbm_bytes_per_device"] == tpu.CHIPS["v5e"].hbm_bytes


def test_gpt3_small_fits_on_v5e_2x2_with_a_1_2_2_mesh_and_a_quarter_of_it_per_device(tmp_path):
  path = tmp_path / "gpt3_small.json"
  argv = ["aot", "experiments.gpt3", "--topology=v5e:2x2", "--config.model.size=gpt3-small"]
  argv += ["--config.fsdp=2", "--config.tensor=2", "--config.batch_size=2"]
  aot.main([*argv, "--config.model.scan_layers=True", f"--json={path}"])
  r = json.loads(path.read_text())
  assert r["fits"] and r["mesh"] == {"data": 1, "fsdp": 2, "tensor": 2}
  assert r["num_params"] == 125_226_240
  assert r["memory_per_device"]["parameters"] == 4 * r["num_params"] // 4  # float32, 1/4 each


def test_the_check_leaves_no_libtpu_settings_behind(v5e_report):
  # An experiment started later by the same process would take them for a Cloud TPU VM.
  for name in ("TPU_WORKER_HOSTNAMES", "TPU_ACCELERATOR_TYPE", "ALLOW_MULTIPLE_LIBTPU_LOAD"):
    assert name not in os.environ


def test_json_has_the_documented_keys_and_a_consistent_roofline(v5e_report):
  r = v5e_report
  assert JSON_KEYS <= set(r)
  assert r["topology"].startswith("v5litepod-4")
  assert r["flops_per_step"] > 0 and r["est_step_s"] > 0 and 0 < r["est_mfu"] <= 1
  assert r["est_step_s"] == max(r["compute_s"], r["memory_s"])
  chip = tpu.CHIPS["v5e"]
  expected_mfu = r["flops_per_step"] / (r["est_step_s"] * 4 * chip.peak_flops)
  assert r["est_mfu"] == pytest.approx(expected_mfu)


@pytest.mark.parametrize(
    "name, accelerator_type, grid, chips",
    [
        ("v5p-128", "v5p-128", (4, 4, 4), 64),
        ("v5p:4x4x4", "v5p-128", (4, 4, 4), 64),
        ("v4-8", "v4-8", (2, 2, 1), 4),
        ("v4-2048", "v4-2048", (8, 8, 16), 1024),
        ("v4-4096", "v4-4096", (8, 16, 16), 2048),
        ("v5e-16", "v5litepod-16", (4, 4), 16),
        ("v5litepod-256", "v5litepod-256", (16, 16), 256),
        ("v5e:2x2", "v5litepod-4", (2, 2), 4),
        ("v6e-8", "v6e-8", (2, 4), 8),
    ],
)
def test_topology_names_in_both_forms(name, accelerator_type, grid, chips):
  t = tpu.parse(name)
  assert (t.accelerator_type, t.grid, t.num_chips) == (accelerator_type, grid, chips)


def test_multislice_topology_counts_every_slice():
  t = tpu.parse("v5e-16", num_slices=2)
  assert t.num_chips == 32 and "2 slices" in t.describe()


@pytest.mark.parametrize(
    "name, says",
    [
        ("v7x-8", "unknown TPU generation"),
        ("v5p-12", "count TensorCores"),
        ("v4:2x2", "3 dimensions"),
        ("pod", "not a topology name"),
    ],
)
def test_bad_topology_names_list_the_valid_forms(name, says):
  with pytest.raises(tpu.TopologyError, match=says) as e:
    tpu.parse(name)
  assert "v5p-128" in str(e.value) and "v5e:4x4" in str(e.value)


def _main(argv, capsys):
  """aot.main in this process: (exit status, stdout, stderr)."""
  try:
    aot.main(["aot", *argv])
    status = 0
  except SystemExit as e:
    status = e.code
  out = capsys.readouterr()
  return status, out.out, out.err


@pytest.mark.parametrize(
    "args, says",
    [
        (["--topology=v9-8"], "unknown TPU generation 'v9'"),
        (["--topology=v5e:2x2", "--config.fsdp=3"], "must divide the 4 devices"),
        (["--topology=v5e:2x2", "--config.batch_size=6"], "batch_size=6"),
        (["--topology=v5e:2x2", "--config.no_such_key=1"], "unknown config key"),
        (["--topology=local", "--num_slices=2"], "needs a TPU topology"),
        ([], "--topology"),
    ],
)
def test_bad_input_is_one_clear_error_and_exit_status_2(args, says, capsys):
  status, _, err = _main([EXPERIMENT, *SMALL, *args], capsys)
  assert status == 2 and says in err and err.startswith("error: ")


def test_an_unknown_experiment_is_a_clear_error(capsys):
  status, _, err = _main(["experiments.no_such_experiment", "--topology=v5e:2x2"], capsys)
  assert status == 2 and "not an importable experiment" in err


def test_a_step_that_does_not_fit_exits_1_naming_what_would_help(capsys):
  # 1.6B float32 parameters with Adam, replicated: about 19 GiB of state per 16 GiB v5e chip.
  big = [
      "--config.model.model_dim=4096",
      "--config.model.mlp_dim=16384",
      "--config.model.num_heads=32",
      "--config.model.num_layers=8",
      "--config.model.scan_layers=true",
  ]
  status, out, err = _main([EXPERIMENT, "--topology=v5e:2x2", *SMALL, *big], capsys)
  assert status == 1 and "DOES NOT FIT" in out
  for hint in (
      "--config.fsdp",
      "--config.tensor",
      "--config.model.remat",
      "--config.batch_size",
      "--config.grad_accum_steps",
  ):
    assert hint in err


def test_local_topology_compiles_for_this_machines_devices(tmp_path, capsys):
  path = tmp_path / "local.json"
  status, out, err = _main(
      [EXPERIMENT, "--topology=local", "--config.fsdp=2", f"--json={path}", *SMALL], capsys
  )
  assert status == 0, err
  r = json.loads(path.read_text())
  assert JSON_KEYS <= set(r) and r["fits"] and r["topology"].startswith("local")
  assert r["mesh"]["fsdp"] == 2 and r["num_devices"] == r["mesh"]["data"] * 2
  assert "per device" in out and "MFU" in out


def test_the_command_runs_as_a_module():
  result = subprocess.run(
      [sys.executable, "-m", "jaxmodels.aot", "--help"],
      cwd=ROOT,
      env=dict(os.environ, PYTHONPATH=ROOT),
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert result.returncode == 0 and "--topology" in result.stdout


def test_entry_points_keep_cpu_hosts_off_libtpu():
  """With libtpu installed and JAX_PLATFORMS unset, a CPU host neither loads libtpu nor warns."""
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  env["PYTHONPATH"] = ROOT
  code = "from jaxmodels import _env; _env.configure_process(); import jax; print(jax.devices())"
  result = subprocess.run(
      [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
  )
  assert result.returncode == 0 and "Cpu" in result.stdout
  if not tpu_host():
    assert result.stderr == ""


def tpu_host() -> bool:
  from jax._src import hardware_utils

  return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0
