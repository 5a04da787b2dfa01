"""Classification(flip_eval=True): the final evaluation's test-time flip."""

import jax
import numpy as np

from jaxmodels import tasks
from jaxmodels.data.synthetic import SyntheticDataset
from jaxmodels.models.mlp import MLP
from jaxmodels.train import steps


def test_flip_metrics_average_the_probabilities_of_each_image_and_its_mirror():
  data = SyntheticDataset("image_classification", image_shape=(4, 6, 2), num_classes=5)
  batch = next(data.train_batches(32, 0))
  batch["mask"] = np.r_[np.ones(28), np.zeros(4)].astype(np.float32)  # 4 padding rows
  model, task = MLP(hidden_sizes=(16,), num_classes=5), tasks.Classification(
      5, label_smoothing=0.2, flip_eval=True
  )
  variables = model.init(jax.random.PRNGKey(0), batch["inputs"])
  assert tasks.decodes(task) and not tasks.decodes(tasks.Classification(5))

  def softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)

  mirrored = np.ascontiguousarray(batch["inputs"][:, :, ::-1])  # width is axis 2 of [B, H, W, C]
  probs = (
      sum(
          softmax(np.asarray(model.apply(variables, x), np.float64))
          for x in (batch["inputs"], mirrored)
      )
      / 2
  )
  real = batch["mask"] == 1
  labels = batch["targets"][real]
  want_accuracy = np.mean(probs[real].argmax(-1) == labels)
  smoothed = np.full((len(labels), 5), 0.2 / 5) + 0.8 * np.eye(5)[labels]
  want_loss = -np.mean(np.sum(smoothed * np.log(probs[real]), -1))

  state = steps.TrainState(
      step=0, params=variables["params"], model_state={}, opt_state=(), rng=None
  )
  sums = steps.eval_step(state, batch, model=model, task=task, decode=True)
  assert float(sums["flip_accuracy"][1]) == 28.0
  np.testing.assert_allclose(float(sums["flip_accuracy"][0]) / 28, want_accuracy, rtol=1e-6)
  np.testing.assert_allclose(float(sums["flip_loss"][0]) / 28, want_loss, rtol=1e-5)
  # The mirror changes this model's outputs, so the flip metrics are not the plain ones.
  assert float(sums["flip_loss"][0]) != float(sums["loss"][0])
