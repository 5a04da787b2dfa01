"""Benchmark machinery with tiny shapes: model equivalence, FLOP counts, timing bookkeeping,
records and the --quick command. No assertion on speed."""

import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from benchmarks import jax_side, run, shapes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def flax_param_count(spec: jax_side.Spec) -> int:
  variables = jax.eval_shape(
      lambda: spec.model.init(jax.random.key(0), *spec.task.model_args(spec.batch))
  )
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize("name", shapes.MODELS)
def test_make_batch_layout(name):
  shape = shapes.shapes(name, quick=True)
  batch = shapes.make_batch(name, shape, seed=3)
  n = shape["batch_size"]
  assert batch["targets"].dtype == np.int32 and batch["targets"].shape[0] == n
  if "image_shape" in shape:
    assert batch["inputs"].shape == (n, *shape["image_shape"])
    assert batch["inputs"].dtype == np.float32
  else:
    length = shape.get("context") or shape["seq_len"]
    assert batch["inputs"].shape == batch["targets"].shape == (n, length)
    np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
  np.testing.assert_array_equal(batch["targets"], shapes.make_batch(name, shape, 3)["targets"])


def test_unknown_model_names_the_valid_ones():
  with pytest.raises(ValueError, match="resnet18"):
    shapes.shapes("vgg", quick=True)


# ---------- PyTorch mirrors of the flax models


@pytest.mark.parametrize("name", shapes.MODELS)
def test_torch_model_mirrors_flax_parameters(name):
  torch_models = pytest.importorskip("benchmarks.torch_models")
  shape = shapes.shapes(name, quick=True)
  spec = jax_side.make_spec(name, shape)
  step = torch_models.TorchStep(name, shape, spec.batch)
  # nn.LSTM keeps two bias vectors (input and hidden side); the fused flax layer keeps one.
  extra = 4 * shape["hidden_size"] if name == "lstm" else 0
  assert step.num_params() == flax_param_count(spec) + extra


@pytest.mark.parametrize("name", ["gpt", "resnet18", "mlp"])
def test_torch_counted_flops_equal_analytic(name):
  torch_models = pytest.importorskip("benchmarks.torch_models")
  from torch.utils.flop_counter import FlopCounterMode

  shape = shapes.shapes(name, quick=True)
  spec = jax_side.make_spec(name, shape)
  step = torch_models.TorchStep(name, shape, spec.batch)
  model = step.model
  if name == "gpt":  # explicit attention matmuls, which the counter sees
    model = torch_models.GPT(**shape, sdpa=False)
  with FlopCounterMode(display=False) as counter:
    model(step.x)
  assert counter.get_total_flops() == pytest.approx(spec.flops_per_example * spec.batch_size)


def test_torch_lstm_flops_and_semantics_against_explicit_loop():
  torch_models = pytest.importorskip("benchmarks.torch_models")
  import torch
  from torch.utils.flop_counter import FlopCounterMode

  shape = shapes.shapes("lstm", quick=True)
  spec = jax_side.make_spec("lstm", shape)
  model = torch_models.TorchStep("lstm", shape, spec.batch).model
  ids = torch.from_numpy(spec.batch["inputs"]).long()
  lstm = model.lstm
  hidden = shape["hidden_size"]

  def explicit(ids):
    x = model.embed(ids)
    h = c = torch.zeros(ids.shape[0], hidden)
    outs = []
    for t in range(ids.shape[1]):
      gates = torch.nn.functional.linear(
          x[:, t], lstm.weight_ih_l0, lstm.bias_ih_l0
      ) + torch.nn.functional.linear(h, lstm.weight_hh_l0, lstm.bias_hh_l0)
      i, f, g, o = gates.chunk(4, dim=-1)
      c = f.sigmoid() * c + i.sigmoid() * g.tanh()
      h = o.sigmoid() * c.tanh()
      outs.append(h)
    return model.head(torch.stack(outs, 1))

  with torch.no_grad(), FlopCounterMode(display=False) as counter:
    want = explicit(ids)
  with torch.no_grad():
    got = model(ids)
  torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
  assert counter.get_total_flops() == pytest.approx(spec.flops_per_example * spec.batch_size)


def test_torch_sdpa_equals_explicit_attention():
  torch_models = pytest.importorskip("benchmarks.torch_models")
  import torch

  shape = shapes.shapes("gpt", quick=True)
  torch.manual_seed(0)
  fused = torch_models.GPT(**shape)
  plain = torch_models.GPT(**shape, sdpa=False)
  plain.load_state_dict(fused.state_dict())
  ids = torch.from_numpy(shapes.make_batch("gpt", shape)["inputs"]).long()
  with torch.no_grad():
    torch.testing.assert_close(fused(ids), plain(ids), rtol=1e-4, atol=1e-5)


def test_torch_step_lowers_the_loss_on_a_fixed_batch():
  torch_models = pytest.importorskip("benchmarks.torch_models")
  shape = shapes.shapes("mlp", quick=True)
  step = torch_models.TorchStep("mlp", shape, shapes.make_batch("mlp", shape))
  losses = [float(step.step()) for _ in range(30)]
  assert losses[-1] < 0.5 * losses[0]


# ---------- the engine's step


def test_jax_step_runs_the_engine_step_and_counts_steps():
  spec = jax_side.make_spec("mlp", shapes.shapes("mlp", quick=True))
  step = jax_side.JaxStep(spec, "none")
  assert step.first_step_s > 0
  step.run(5)
  assert int(step.strategy.get_state(step.state).step) == 6  # the first step + 5


def test_jax_step_rejects_a_batch_that_does_not_split():
  spec = jax_side.make_spec("gpt", shapes.shapes("gpt", quick=True))  # batch 4, 8 devices
  with pytest.raises(ValueError, match="does not split"):
    jax_side.JaxStep(spec, "pmap")


# ---------- timing bookkeeping


class FakeClock:
  """A contender whose steps take a fixed number of seconds; records its calls."""

  def __init__(self, label, per_step, log):
    self.label, self.per_step, self.log = label, per_step, log

  def __call__(self, n):
    self.log.append((self.label, n))
    return self.per_step * n


def test_contest_sizes_chunks_rotates_and_pairs_rounds():
  log = []
  slow = FakeClock("slow", 0.5, log)
  fast = FakeClock("fast", 0.25, log)
  a, b = run.Contender("slow", slow), run.Contender("fast", fast)
  settings = run.Settings(
      quick=True, rounds=3, chunk_s=1.0, strategies=("none",), torch_compile=False
  )
  extras = run.contest([a, b], settings, extra=lambda: 7.0)
  assert (a.steps, b.steps) == (2, 4)
  timed = [label for label, n in log[4:]]  # after two warm-up calls each
  assert timed == ["slow", "fast", "fast", "slow", "slow", "fast"]
  assert a.times == [0.5] * 3 and b.times == [0.25] * 3 and extras == [7.0] * 3
  assert run.paired_ratio(a, b) == pytest.approx(2.0)


def test_paired_ratio_is_the_median_of_per_round_ratios():
  a = run.Contender("a", None, times=[1.0, 10.0, 3.0])
  b = run.Contender("b", None, times=[1.0, 2.0, 1.0])
  assert run.paired_ratio(a, b) == pytest.approx(3.0)  # ratios 1, 5, 3
  assert a.step_s == 3.0


def test_conv_devices_record_from_resnet_contenders():
  one = run.Contender("jax:none", None, times=[2.0, 2.0, 4.0])
  two = run.Contender("jax:pmap", None, times=[1.0, 1.25, 2.0])
  resnet = {"jax_per_s": 128 / two.step_s, "jax_variant": "jax:pmap", "_contenders": [one, two]}
  record = run.conv_devices_record(resnet)
  assert record["ratio"] == pytest.approx(2.0)  # per round: 2, 1.6, 2
  assert record["jax_per_s"] == pytest.approx(128 / 1.25)
  assert record["one_device_per_s"] == pytest.approx(128 / 2.0)


@pytest.mark.parametrize(
    "record, met",
    [
        ({"benchmark": "gpt", "ratio_vs_torch": 1.1, "mfu": 0.8}, True),
        ({"benchmark": "gpt", "ratio_vs_torch": 1.1, "mfu": 0.5}, False),
        ({"benchmark": "mlp", "ratio_vs_torch": 1.19}, False),
        ({"benchmark": "compile_cache:gpt", "ratio": 0.2}, True),
        ({"benchmark": "compile_cache:gpt", "ratio": 0.31}, False),
        ({"benchmark": "input_pipeline", "ratio": 0.9}, None),
        ({"benchmark": "lstm", "note": "skipped"}, None),
    ],
)
def test_finish_checks_goals(record, met):
  out = run.finish(record)
  assert out["goal_met"] is met
  assert {"benchmark", "jax_per_s", "torch_per_s", "ratio_vs_torch", "mfu"} <= set(out)


def test_table_lists_every_record():
  records = [
      run.finish({"benchmark": "gpt", "jax_per_s": 3.0, "ratio_vs_torch": 0.5}),
      run.finish({"benchmark": "input_pipeline", "note": "skipped: prepare fashion_mnist"}),
  ]
  text = run.table(records)
  assert "gpt" in text and "0.50" in text and "NO" in text
  assert "skipped: prepare fashion_mnist" in text


def test_bad_benchmark_name_is_an_error(capsys):
  with pytest.raises(SystemExit):
    run.parse_args(["--only=gpt,nope"])
  assert "nope" in capsys.readouterr().err


# ---------- the command, end to end


def test_quick_run_writes_json_records(tmp_path, capsys):
  out = tmp_path / "bench.json"
  records = run.main(["--quick", "--only=mlp,lstm", f"--json={out}", "--rounds=1"])
  printed = capsys.readouterr().out
  saved = json.loads(out.read_text())
  assert [r["benchmark"] for r in saved] == ["mlp", "lstm"] == [r["benchmark"] for r in records]
  for r in saved:
    assert r["jax_per_s"] > 0 and 0 < r["mfu"] < 1
    assert r["jax_variant"] in ("jax:none", "jax:pmap")
    if r["torch_per_s"] is not None:
      assert r["ratio_vs_torch"] > 0
    assert r["benchmark"] in printed
  assert set(saved[0]["per_s"]) >= {"jax:none", "jax:pmap"}  # batch 8 splits over 8 devices


def test_models_with_kernels_are_timed_with_them_under_pmap(monkeypatch):
  from jaxmodels.kernels import onednn

  if reason := onednn.unavailable_reason():
    pytest.skip(reason)
  monkeypatch.setitem(shapes.QUICK, "lstm", dict(shapes.QUICK["lstm"], batch_size=8))
  settings = run.Settings(
      quick=True, rounds=1, chunk_s=0.01, strategies=("pmap",), torch_compile=False
  )
  record = run.model_bench("lstm", settings, jax_only=True)
  assert set(record["per_s"]) == {"jax:pmap", "jax:pmap+onednn"}
  assert all(v > 0 for v in record["per_s"].values())
  spec = jax_side.make_spec("lstm", shapes.shapes("lstm", quick=True), kernels="onednn")
  assert spec.model.impl == "onednn"
  replace = run.dataclasses.replace
  assert run._kernel_spec(spec, replace(settings, kernels=False), []) is None
  assert run._kernel_spec(spec, replace(settings, strategies=("none", "mesh")), []) is None
  with pytest.raises(ValueError, match="gpt has no kernel choice"):
    jax_side.make_spec("gpt", shapes.shapes("gpt", quick=True), kernels="onednn")


def test_input_pipeline_without_data_is_skipped(tmp_path, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
  settings = run.settings_from(run.parse_args(["--quick"]))
  record = run.input_pipeline_bench(settings)
  assert record["note"].startswith("skipped: prepare fashion_mnist")


def test_first_step_child_fills_the_compilation_cache(tmp_path):
  cache = tmp_path / "cache"
  proc = subprocess.run(
      [
          sys.executable,
          "-m",
          "benchmarks.jax_side",
          "--first_step=mlp",
          "--quick",
          f"--cache_dir={cache}",
      ],
      cwd=ROOT,
      capture_output=True,
      text=True,
      check=True,
      timeout=120,
      env=dict(os.environ, JAXMODELS_HOST_DEVICES="1"),
  )
  result = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
  assert 0 < result["startup_s"] < result["first_step_s"]
  assert result["first_step_s"] == pytest.approx(
      result["init_s"] + result["compile_s"] + result["step_s"]
  )
  assert any(cache.iterdir())


# ---------- spreads over rounds and over repeated runs


def test_spread_is_the_median_and_range():
  assert run.spread([1.2, 0.9, 1.0, 1.5, 1.1]) == {"": 1.1, "_min": 0.9, "_max": 1.5}
  record = {}
  run.put_spread(record, "ratio", [2.0, 1.0, 4.0])
  assert record == {"ratio": 2.0, "ratio_min": 1.0, "ratio_max": 4.0}


def test_paired_ratios_are_per_round():
  slow = run.Contender("torch", None, times=[2.0, 3.0, 1.0, 4.0, 2.0])
  fast = run.Contender("jax", None, times=[1.0, 2.0, 1.0, 1.0, 2.5])
  assert run.paired_ratios(slow, fast) == pytest.approx([2.0, 1.5, 1.0, 4.0, 0.8])
  # Not the ratio of the median times (2.0 / 1.0): each round's load hits both sides alike.
  assert run.paired_ratio(slow, fast) == pytest.approx(1.5)


def test_combine_repeats_takes_the_median_and_range_of_each_ratio():
  def table_run(gpt, mfu, pipeline):
    return [
        run.finish(
            {"benchmark": "gpt", "ratio_vs_torch": gpt, "mfu": mfu, "ratio_vs_torch_min": 0}
        ),
        run.finish({"benchmark": "input_pipeline", "ratio": pipeline}),
        run.finish({"benchmark": "lstm", "note": "skipped"}),
    ]

  runs = [table_run(1.3, 0.7, 0.9), table_run(1.05, 0.8, 1.0), table_run(1.15, 0.9, 0.8)]
  gpt, pipeline, lstm = run.combine_repeats(runs)
  assert (gpt["ratio_vs_torch"], gpt["ratio_vs_torch_min"], gpt["ratio_vs_torch_max"]) == (
      1.15,
      1.05,
      1.3,
  )
  assert gpt["repeats"]["ratio_vs_torch"] == [1.3, 1.05, 1.15]
  assert gpt["mfu"] == 0.8 and gpt["goal_met"] is True  # the goal is judged on the medians
  assert (pipeline["ratio"], pipeline["ratio_min"], pipeline["ratio_max"]) == (0.9, 0.8, 1.0)
  assert lstm["repeats"] == {} and lstm["ratio_vs_torch"] is None


def test_table_prints_the_range_beside_the_ratio():
  record = {"benchmark": "mlp", "ratio_vs_torch": 1.5, "ratio_vs_torch_min": 1.25}
  record["ratio_vs_torch_max"] = 1.75
  assert "1.50 (1.25-1.75)" in run.table([run.finish(record)])


def test_repeat_must_be_positive(capsys):
  with pytest.raises(SystemExit):
    run.parse_args(["--repeat=0"])
  assert "--repeat=0" in capsys.readouterr().err


def test_gpt_small_sides_share_the_hyper_parameters():
  from experiments import shakespeare_gpt

  config = shakespeare_gpt.get_config()
  args = run.gpt_small_args(quick=False)
  assert (args["steps"], args["batch_size"], args["context"]) == (2000, 12, 64)
  assert (args["model_dim"], args["num_layers"]) == (128, 4)
  assert (args["lr"], args["warmup"], args["eval_every"]) == (config.learning_rate, 100, 500)
  quick = run.gpt_small_args(quick=True)
  assert quick["steps"] < args["steps"] and quick["eval_batches"] == args["eval_batches"]
  assert args["eval_batch_size"] % 2 == 0  # it splits over 2 host devices


def test_torch_schedule_equals_optax_warmup_cosine():
  torch_models = pytest.importorskip("benchmarks.torch_models")
  import optax

  schedule = optax.warmup_cosine_decay_schedule(0.0, 3e-3, 10, 50)
  for step in (0, 5, 10, 11, 30, 49, 50):
    assert torch_models._lr_at(step, 3e-3, 10, 50) == pytest.approx(float(schedule(step)), abs=1e-9)


def test_torch_gpt_small_script_learns_a_periodic_text():
  torch_models = pytest.importorskip("benchmarks.torch_models")
  text = np.tile(np.arange(7, dtype=np.int32), 200)
  windows = np.stack([text[i : i + 9] for i in range(0, 90, 8)])
  data = {
      "train": text,
      "val_inputs": windows[:, :-1],
      "val_targets": windows[:, 1:],
      "test_inputs": windows[:, :-1],
      "test_targets": windows[:, 1:],
      "eval_sample": np.arange(4),
      "prompt": np.array([0, 1], np.int32),
  }
  args = dict(
      vocab_size=7, model_dim=16, num_layers=1, num_heads=2, mlp_dim=32, context=8, batch_size=4,
      steps=40, eval_every=10, eval_batch_size=4, eval_batches=1, sample_tokens=3, warmup=4,
      lr=1e-2, b2=0.99,
      weight_decay=0.1, clip=1.0, seed=0,
  )  # fmt: skip
  out = torch_models.train_gpt_small(data, args)
  assert [s for s, _ in out["intermediate_eval_loss"]] == [10, 20, 30]
  assert out["eval_loss"] < 0.5 * np.log(7) and out["eval_loss"] == out["test_loss"]
  assert out["threads"] >= 1 and out["step_s"] > 0 and out["probe_s"] > 0


def test_dp_bench_pairs_the_private_and_the_plain_step():
  records = run.main(["--quick", "--only=dp", "--rounds=1"])
  (record,) = records
  assert record["benchmark"] == "dp" and record["goal"] == "ratio >= 0.5"
  assert record["jax_per_s"] > 0 and record["plain_per_s"] > 0 and record["ratio"] > 0
  assert record["vmap_per_s"] > 0 and record["vmap_ratio"] > 0
