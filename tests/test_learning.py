"""Learnable: each model family overfits a small fixed batch through the engine's train step."""

import jax
import numpy as np
import pytest

from jaxmodels import tasks
from jaxmodels.data.synthetic import SyntheticDataset
from jaxmodels.models.cnn import CNN
from jaxmodels.models.mlp import MLP
from jaxmodels.models.rnn import RNNLanguageModel
from jaxmodels.models.transformer import GPT
from jaxmodels.train import base_config, metrics, optim, parallel, steps

IMAGES = SyntheticDataset("image_classification", image_shape=(8, 8, 1), num_classes=10)
TEXT = SyntheticDataset("language_model", block_size=16, vocab_size=20)
CASES = {
    "mlp": (MLP(hidden_sizes=(64,)), IMAGES, tasks.Classification(10)),
    "cnn": (CNN(features=(8,), dense_features=32), IMAGES, tasks.Classification(10)),
    "lstm": (
        RNNLanguageModel(vocab_size=20, embed_dim=16, hidden_size=64),
        TEXT,
        tasks.LanguageModel(),
    ),
    "gpt": (
        GPT(vocab_size=20, model_dim=32, num_layers=2, num_heads=2, mlp_dim=64, max_len=16),
        TEXT,
        tasks.LanguageModel(),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_overfits_a_fixed_batch(name):
  model, data, task = CASES[name]
  config = base_config()
  config.optimizer, config.learning_rate = "adam", 1e-2
  tx, schedule = optim.make_optimizer(config), optim.learning_rate_schedule(config)
  batch = next(data.train_batches(16, seed=0))
  strategy = parallel.make("none", model)
  state = steps.init_state(model, task, tx, batch, seed=0)
  train = strategy.train_fn(task, tx, schedule, state)
  dstate, device_batch = strategy.put_state(state), strategy.put_batch(batch)
  losses = []
  for _ in range(150):
    dstate, sums = train(dstate, device_batch)
    losses.append(metrics.reduce_sums([jax.device_get(sums)])["loss"])
  assert np.all(np.isfinite(losses))
  assert losses[-1] < 0.2 * losses[0], (losses[0], losses[-1])
