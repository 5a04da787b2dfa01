"""End to end on real data: prepare Fashion-MNIST from its package source and train the CNN.

Skipped, with the sources' errors as the reason, where none of Fashion-MNIST's sources (its
download, the Debian package) can be reached; a source that answers with wrong files fails."""

import os
import subprocess
import sys

import pytest

from experiments import fashion_mnist_cnn
from jaxmodels.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# In prepare's message when every source failed; a source that was reached but gave wrong or
# incomplete files says one of the others.
UNOBTAINABLE = "could not obtain the raw files"
REACHED = ("CorruptDataError", "did not provide")


def _prepare(data_dir):
  return subprocess.run(
      [sys.executable, "-m", "jaxmodels.data.prepare", "fashion_mnist", f"--data_dir={data_dir}"],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=600,
  )


def test_prepare_fashion_mnist_and_train_the_cnn_well_above_chance(tmp_path):
  data_dir = str(tmp_path / "data")
  result = _prepare(data_dir)
  output = result.stdout + result.stderr
  if result.returncode and UNOBTAINABLE in output and not any(w in output for w in REACHED):
    tried = " ".join(line.strip() for line in output.splitlines() if line.startswith("  - "))
    pytest.skip(f"no source of Fashion-MNIST is reachable from here: {tried or output}"[:700])
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
  again = _prepare(data_dir)
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
