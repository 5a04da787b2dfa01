"""parallelism='mesh' over (data, fsdp, tensor) on 8 fake CPU devices: losses equal one device for
every mesh shape, parameters are split as the logical-axis rules say, a checkpoint of one mesh
restores into another, and bad mesh sizes are clear errors."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from jaxmodels import tasks
from jaxmodels.data.synthetic import SyntheticDataset
from jaxmodels.models.transformer import GPT, EncoderDecoder
from jaxmodels.train import (
    base_config,
    checkpoint,
    config as config_lib,
    metrics,
    optim,
    parallel,
    sharding,
)

VOCAB, DIM, HEADS, MLP_DIM, SEQ, BATCH = 64, 32, 8, 64, 16, 8
MESHES = [(8, 1, 1), (1, 8, 1), (1, 1, 8), (2, 2, 2), (2, 1, 4)]
LM_DATA = SyntheticDataset("language_model", block_size=SEQ, vocab_size=VOCAB)
S2S_DATA = SyntheticDataset(
    "seq2seq", src_len=SEQ, tgt_len=SEQ, src_vocab_size=VOCAB, tgt_vocab_size=VOCAB
)
TRANSFORMER = dict(model_dim=DIM, num_layers=2, num_heads=HEADS, mlp_dim=MLP_DIM, max_len=SEQ)


def _part(init, names):
  return nn.with_logical_partitioning(init, names)


class TinyLM(nn.Module):
  """A small annotated language model: every parameter and the hidden activations carry
  logical axis names (vocab, embed, heads, kv, mlp, norm; batch, length, mlp)."""

  num_heads: int = HEADS
  mlp_dim: int = MLP_DIM

  @nn.compact
  def __call__(self, ids, train=False):
    dense, zeros = nn.initializers.lecun_normal(), nn.initializers.zeros
    heads, kv = self.num_heads, DIM // self.num_heads

    def param(name, init, names, shape):
      return self.param(name, _part(init, names), shape)

    embed = param("embed", nn.initializers.normal(0.5), ("vocab", "embed"), (VOCAB, DIM))
    x = nn.with_logical_constraint(embed[ids], ("batch", "length", "embed"))
    h = nn.LayerNorm(
        scale_init=_part(nn.initializers.ones, ("norm",)), bias_init=_part(zeros, ("norm",))
    )(x)
    q = param("q", dense, ("embed", "heads", "kv"), (DIM, heads, kv))
    h = jax.numpy.einsum("bld,dhk->blhk", h, q) + param(
        "q_bias", zeros, ("heads", "kv"), (heads, kv)
    )
    h = nn.with_logical_constraint(jax.numpy.tanh(h), ("batch", "length", "heads", "kv"))
    out = param("out", dense, ("heads", "kv", "embed"), (heads, kv, DIM))
    x = x + jax.numpy.einsum("blhk,hkd->bld", h, out)
    fc1 = param("fc1", dense, ("embed", "mlp"), (DIM, self.mlp_dim))
    h = nn.gelu(x @ fc1 + param("fc1_bias", zeros, ("mlp",), (self.mlp_dim,)))
    h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
    x = x + h @ param("fc2", dense, ("mlp", "embed"), (self.mlp_dim, DIM))
    return nn.with_logical_constraint(x @ embed.T, ("batch", "length", "vocab"))


CASES = {
    "tiny_annotated": (TinyLM(), tasks.LanguageModel(), LM_DATA),
    "gpt": (GPT(vocab_size=VOCAB, **TRANSFORMER), tasks.LanguageModel(), LM_DATA),
    "encoder_decoder": (
        EncoderDecoder(src_vocab_size=VOCAB, tgt_vocab_size=VOCAB, **TRANSFORMER),
        tasks.Seq2Seq(),
        S2S_DATA,
    ),
}


def _optimizer():
  config = base_config()
  config.optimizer, config.learning_rate = "adam", 1e-2
  return optim.make_optimizer(config), optim.learning_rate_schedule(config)


def _strategy(model, mesh):
  if mesh in ("none", "pmap"):
    return parallel.make(mesh, model)
  _, fsdp, tensor = mesh
  strategy = parallel.make("mesh", model, fsdp=fsdp, tensor=tensor)
  assert dict(strategy.mesh.shape) == dict(zip(sharding.AXES, mesh))
  return strategy


def _train(case, mesh, num_steps=3, start=0, state=None):
  """(losses, strategy, device state) after `num_steps` steps from `state` (else a fresh one)."""
  model, task, data = CASES[case]
  tx, schedule = _optimizer()
  strategy = _strategy(model, mesh)
  first = next(data.train_batches(BATCH, 0))
  if state is None:
    state = strategy.init_state(task, tx, first, seed=0)
  train = strategy.train_fn(task, tx, schedule, state)
  dstate = strategy.put_state(state)
  batches = data.train_batches(BATCH, 0, start)
  losses = []
  for _ in range(num_steps):
    dstate, sums = train(dstate, strategy.put_batch(next(batches)))
    losses.append(metrics.reduce_sums([strategy.fetch(sums)])["loss"])
  return np.array(losses), strategy, dstate


_REFERENCE = {}


def _reference(case, num_steps=3):
  if (case, num_steps) not in _REFERENCE:
    _REFERENCE[(case, num_steps)] = _train(case, "none", num_steps)[0]
  return _REFERENCE[(case, num_steps)]


def _cases_and_meshes():
  for case in CASES:
    for mesh in MESHES:
      yield pytest.param(case, mesh, id=f"{case}-{'x'.join(map(str, mesh))}")


@pytest.mark.parametrize("case,mesh", list(_cases_and_meshes()))
def test_every_mesh_trains_like_one_device(case, mesh):
  losses, _, _ = _train(case, mesh)
  np.testing.assert_allclose(losses, _reference(case), rtol=1e-5, atol=1e-5)
  assert abs(losses[0] - losses[-1]) > 1e-3  # the steps moved the parameters


def test_pmap_is_unaffected_by_the_annotations():
  losses, _, _ = _train("tiny_annotated", "pmap")
  np.testing.assert_allclose(losses, _reference("tiny_annotated"), rtol=1e-5, atol=1e-5)


def _shape(x):
  return jax.ShapeDtypeStruct(x.shape, x.dtype)


@pytest.mark.parametrize("case", list(CASES))
def test_parameters_and_optimizer_state_are_split_by_the_rules(case):
  """The rules' axes stay on the dimensions they name, and the parameter axes a name leaves
  unused go to another dimension: each device holds 1/(fsdp * tensor) of every array (every
  dimension of these models divides by 4)."""
  model, task, data = CASES[case]
  tx, _ = _optimizer()
  strategy = _strategy(model, (2, 2, 2))
  state = strategy.init_state(task, tx, next(data.train_batches(BATCH, 0)), seed=0)
  batch = jax.tree_util.tree_map(_shape, next(data.train_batches(2, 0)))
  variables = jax.eval_shape(
      lambda b: model.init(jax.random.PRNGKey(0), *task.model_args(b)), batch
  )
  boxed = jax.tree_util.tree_leaves(variables["params"], is_leaf=sharding.is_boxed)
  per_device = everything = named = 0
  for (path, x), box in zip(jax.tree_util.tree_leaves_with_path(state.params), boxed, strict=True):
    assert sharding.is_boxed(box), path  # every parameter of these models is named
    named += "embed" in box.names and bool({"vocab", "heads", "mlp"} & set(box.names))
    rules = nn.logical_to_mesh_axes(box.names, sharding.RULES)
    actual = tuple(x.sharding.spec) + (None,) * (x.ndim - len(x.sharding.spec))
    for dim, axes in enumerate(rules):
      wanted = set(sharding._names(sharding._fitting(axes, x.shape[dim], strategy.mesh)))
      assert wanted <= set(sharding._names(actual[dim])), (path, rules, actual)
    shard_bytes = x.addressable_shards[0].data.nbytes
    assert shard_bytes * 4 == x.nbytes, (path, actual)
    per_device, everything = per_device + shard_bytes, everything + x.nbytes
  assert named and per_device * 4 == everything
  # Adam's moments are laid out like their parameters.
  for moments in (state.opt_state[0].mu, state.opt_state[0].nu):
    for p, m in zip(jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(moments)):
      assert m.sharding == p.sharding


def test_the_step_constrains_activations_only_on_the_mesh():
  model, task, data = CASES["tiny_annotated"]
  tx, schedule = _optimizer()
  batch = next(data.train_batches(BATCH, 0))
  texts = {}
  for mesh in ("none", (2, 2, 2)):
    strategy = _strategy(model, mesh)
    state = strategy.init_state(task, tx, batch, seed=0)
    fn = strategy.train_fn(task, tx, schedule, state)
    texts[mesh] = fn.lower(strategy.put_state(state), strategy.put_batch(batch)).as_text()
  assert "sharding_constraint" in texts[(2, 2, 2)]
  assert "sharding_constraint" not in texts["none"]
  # Shapes alone (as an ahead-of-time compile has them) lower to the same program.
  shapes = jax.tree_util.tree_map(_shape, batch)
  abstract = strategy.abstract_state(task, tx, shapes, seed=0)
  fn = strategy.train_fn(task, tx, schedule, abstract)
  assert fn.lower(abstract, shapes).as_text() == texts[(2, 2, 2)]


def test_a_checkpoint_restores_into_another_mesh_and_continues_the_same(tmp_path):
  straight, _, _ = _train("tiny_annotated", (8, 1, 1), num_steps=4)
  first, _, dstate = _train("tiny_annotated", (8, 1, 1), num_steps=2)
  ckpts = checkpoint.Checkpoints(str(tmp_path), 1)
  ckpts.save(dstate, {"step": 2})
  model, task, data = CASES["tiny_annotated"]
  tx, _ = _optimizer()
  other = _strategy(model, (2, 2, 2))
  abstract = other.abstract_state(task, tx, next(data.train_batches(BATCH, 0)), seed=0)
  restored, meta = ckpts.restore_latest(abstract, on_devices=True)
  ckpts.close()
  assert meta == {"step": 2} and int(restored.step) == 2
  for x, want in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(abstract)):
    assert x.sharding == want.sharding
  then, _, _ = _train("tiny_annotated", (2, 2, 2), num_steps=2, start=2, state=restored)
  np.testing.assert_allclose(np.concatenate([first, then]), straight, rtol=1e-5, atol=1e-5)


def test_bad_mesh_sizes_are_clear_errors():
  model = CASES["gpt"][0]
  with pytest.raises(config_lib.ConfigError, match=r"fsdp=3 x config.tensor=1 must divide the 8"):
    parallel.make("mesh", model, fsdp=3)
  with pytest.raises(config_lib.ConfigError, match=r"tensor=4 does not divide .*num_heads=6"):
    parallel.make("mesh", model.clone(num_heads=6), tensor=4)
  with pytest.raises(config_lib.ConfigError, match=r"tensor=8 does not divide .*mlp_dim=36"):
    parallel.make("mesh", model.clone(mlp_dim=36), tensor=8)
  config = base_config()
  config.parallelism, config.fsdp, config.tensor, config.batch_size = "mesh", 2, 2, 6
  with pytest.raises(config_lib.ConfigError, match=r"batch_size=6 does not divide .* 4 batch"):
    config_lib.check(config, 8)
  config.fsdp, config.tensor, config.batch_size = 4, 4, 8
  with pytest.raises(config_lib.ConfigError, match=r"fsdp=4 x config.tensor=4 = 16 must divide"):
    config_lib.check(config, 8)
