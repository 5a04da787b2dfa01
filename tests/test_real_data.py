"""End to end on real data: prepare Fashion-MNIST from its package source and train the CNN."""

import os
import subprocess
import sys

from experiments import fashion_mnist_cnn
from jaxmodels.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_prepare_fashion_mnist_and_train_the_cnn_well_above_chance(tmp_path):
  data_dir = str(tmp_path / "data")
  result = subprocess.run(
      [sys.executable, "-m", "jaxmodels.data.prepare", "fashion_mnist", f"--data_dir={data_dir}"],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
  again = subprocess.run(
      [sys.executable, "-m", "jaxmodels.data.prepare", "fashion_mnist", f"--data_dir={data_dir}"],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert again.returncode == 0 and "already prepared" in again.stdout + again.stderr
  config = fashion_mnist_cnn.get_config()
  config.update(
      dict(
          data_dir=data_dir,
          num_train_steps=300,
          batch_size=64,
          log_every_steps=100,
          eval_every_steps=1000,
          checkpoint_every_steps=300,
          progress_bar=False,
      )
  )
  summary = loop.train_and_evaluate(fashion_mnist_cnn, config, str(tmp_path / "run"))
  assert summary["test_accuracy"] >= 0.80, summary
