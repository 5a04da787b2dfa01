"""Storage faults and remote workdirs: a full disk during a checkpoint save, a gs:// workdir without
gcsfs, credentials or network, metrics.jsonl on an object store, unreadable checkpoints set aside
and predict's reads through etils.epath, and SIGTERM in a multi-process run without jax's
preemption service. Each fault is one paragraph and loses nothing already saved. Object stores
are fsspec's in-memory filesystem standing in for gcsfs behind gs://; no network is used."""

import builtins
import errno
import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

from etils import epath
import jax
import numpy as np
import pytest

from experiments import fashion_mnist_cnn
from jaxmodels import predict
from jaxmodels.train import checkpoint, cli, config as config_lib, loop, metrics, storage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FULL = OSError(errno.ENOSPC, "No space left on device")
# What tensorstore raises through orbax when the disk fills under an array write.
TENSORSTORE_FULL = ValueError(
    'RESOURCE_EXHAUSTED: Failed writing: "/w/checkpoints/4.orbax-checkpoint-tmp/state/d/9f": '
    "Failed to write 2359 bytes to file 12: No space left on device [os_error_code='28']"
)


def _tiny_config(**overrides):
  config = fashion_mnist_cnn.get_config()
  config.update(
      dict(
          synthetic_data=True,
          batch_size=16,
          num_train_steps=40,
          log_every_steps=10,
          eval_every_steps=20,
          checkpoint_every_steps=10,
          progress_bar=False,
          schedule="constant",
      )
  )
  config.model.features = (4,)
  config.model.dense_features = 8
  config.update(overrides)
  return config


def _fill_the_disk_at(monkeypatch, full_step, error=FULL):
  """The save of checkpoint `full_step` fails as on a full disk, after orbax has written the
  state's arrays into its temporary directory: the meta item's write raises `error`."""
  from orbax.checkpoint._src.handlers import json_checkpoint_handler

  handler = json_checkpoint_handler.JsonCheckpointHandler
  original = handler._save_fn  # pylint: disable=protected-access

  async def save_fn(self, x, directory):
    if x.get("step") == full_step:
      raise error
    return await original(self, x, directory)

  monkeypatch.setattr(handler, "_save_fn", save_fn)


# --- a full disk ------------------------------------------------------------------------------


def test_a_full_disk_during_a_save_names_the_intact_checkpoint_and_loses_nothing(
    tmp_path, monkeypatch
):
  straight = loop.train_and_evaluate(fashion_mnist_cnn, _tiny_config(), str(tmp_path / "a"))
  workdir = tmp_path / "b"
  with monkeypatch.context() as patch:
    _fill_the_disk_at(patch, 20)
    with pytest.raises(storage.StorageError) as failed:
      loop.train_and_evaluate(fashion_mnist_cnn, _tiny_config(), str(workdir))
  message = str(failed.value)
  for words in ("checkpoint of step 20", "the filesystem is full", "intact checkpoint is step 10"):
    assert words in message, message
  assert (
      "Free space on that filesystem, then run the same command to resume from step 10" in message
  )
  assert isinstance(failed.value, cli.USER_ERRORS)  # printed as `error: ...`, exit status 2
  assert sorted(os.listdir(workdir / "checkpoints")) == ["10"]  # the partial save is gone
  assert not list(workdir.glob(".write_test.*"))
  resumed = loop.train_and_evaluate(fashion_mnist_cnn, _tiny_config(), str(workdir))
  assert resumed["steps"] == 40
  assert resumed["train_loss"] == straight["train_loss"]
  assert resumed["test_loss"] == straight["test_loss"]
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  keys = [(r["step"], r["split"]) for r in records]
  assert len(keys) == len(set(keys))


def test_a_full_disk_before_the_first_checkpoint_says_none_is_intact(tmp_path, monkeypatch):
  _fill_the_disk_at(monkeypatch, 10, TENSORSTORE_FULL)
  with pytest.raises(storage.StorageError, match="No checkpoint was saved before it") as failed:
    loop.train_and_evaluate(fashion_mnist_cnn, _tiny_config(), str(tmp_path))
  assert "the filesystem is full" in str(failed.value)
  # No partial checkpoint is left (the run saved none, so it removes the checkpoints/ it made).
  assert not (tmp_path / "checkpoints").exists() or os.listdir(tmp_path / "checkpoints") == []


def test_a_full_disk_under_the_metrics_is_one_paragraph_too(tmp_path, monkeypatch):
  write = metrics.MetricWriter.write

  def full_at_20(self, step, split, values):
    if step == 20:
      raise FULL
    write(self, step, split, values)

  monkeypatch.setattr(metrics.MetricWriter, "write", full_at_20)
  with pytest.raises(storage.StorageError) as failed:
    loop.train_and_evaluate(fashion_mnist_cnn, _tiny_config(), str(tmp_path))
  message = str(failed.value)
  assert message.startswith(f"writing to {tmp_path} failed: the filesystem is full"), message
  assert "intact checkpoint is step 10" in message


def test_a_metrics_file_that_cannot_be_written_is_one_paragraph(tmp_path, monkeypatch):
  write = metrics.MetricWriter.write
  path = str(tmp_path / "metrics.jsonl")

  def denied_at_20(self, step, split, values):
    if step == 20:
      raise PermissionError(errno.EACCES, "Permission denied", path)
    write(self, step, split, values)

  monkeypatch.setattr(metrics.MetricWriter, "write", denied_at_20)
  with pytest.raises(storage.StorageError) as failed:
    loop.train_and_evaluate(fashion_mnist_cnn, _tiny_config(), str(tmp_path))
  message = str(failed.value)
  assert message.startswith(f"writing to {tmp_path} failed: Permission denied"), message
  assert "Make the workdir writable again" in message and "step 10" in message


def test_an_os_error_outside_the_workdir_is_not_called_a_write_failure(tmp_path, monkeypatch):
  write = metrics.MetricWriter.write

  def data_error_at_20(self, step, split, values):
    if step == 20:
      raise PermissionError(errno.EACCES, "Permission denied", "/elsewhere/data.tfrecord")
    write(self, step, split, values)

  monkeypatch.setattr(metrics.MetricWriter, "write", data_error_at_20)
  with pytest.raises(PermissionError):
    loop.train_and_evaluate(fashion_mnist_cnn, _tiny_config(), str(tmp_path / "w"))


def test_write_failures_are_told_apart_from_other_errors():
  assert storage.write_failure(FULL) == "the filesystem is full (No space left on device)"
  assert storage.write_failure(OSError(errno.EDQUOT, "Disk quota exceeded")).startswith(
      "the filesystem is full"
  )
  assert storage.write_failure(TENSORSTORE_FULL).startswith("the filesystem is full")
  assert storage.write_failure(OSError(errno.EACCES, "Permission denied")) == "Permission denied"
  denied = ValueError("PERMISSION_DENIED: Error writing /w/x [os_error_code='13']")
  assert storage.write_failure(denied).startswith("PERMISSION_DENIED")
  assert storage.write_failure(ValueError("a shape mismatch")) is None


def test_a_full_disk_is_one_paragraph_on_the_command_line(tmp_path):
  """No traceback from orbax's writer threads: one `error:` paragraph, exit status 2."""
  workdir = tmp_path / "run"
  script = (
      "import errno, sys\n"
      "from orbax.checkpoint._src.handlers import json_checkpoint_handler as j\n"
      "original = j.JsonCheckpointHandler._save_fn\n"
      "async def save_fn(self, x, directory):\n"
      "  if x.get('step') == 4:\n"
      "    raise OSError(errno.ENOSPC, 'No space left on device')\n"
      "  return await original(self, x, directory)\n"
      "j.JsonCheckpointHandler._save_fn = save_fn\n"
      "from experiments import fashion_mnist_cnn\n"
      "from jaxmodels.train import cli\n"
      "cli.run_experiment(fashion_mnist_cnn, sys.argv)\n"
  )
  flags = [
      f"--workdir={workdir}",
      "--config.synthetic_data=True",
      "--config.model.features=(4,)",
      "--config.model.dense_features=8",
      "--config.batch_size=8",
      "--config.num_train_steps=8",
      "--config.log_every_steps=2",
      "--config.checkpoint_every_steps=2",
      "--config.eval_every_steps=8",
      "--config.schedule=constant",
      "--config.progress_bar=False",
  ]
  env = dict(os.environ, JAXMODELS_HOST_DEVICES="2")
  env.pop("XLA_FLAGS", None)
  result = subprocess.run(
      [sys.executable, "-c", script, *flags],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  (line,) = [x for x in result.stderr.splitlines() if x.strip()]
  assert line.startswith("error: saving the checkpoint of step 4") and "step 2" in line, line
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2"]


def test_the_write_test_file_is_removed_when_the_disk_is_full(tmp_path, monkeypatch):
  """A full disk creates the probe file, then refuses its bytes."""
  real_open = builtins.open

  class FullFile:

    def __init__(self, file):
      self.file = file

    def write(self, data):
      raise OSError(errno.ENOSPC, "No space left on device")

    def __enter__(self):
      return self

    def __exit__(self, *exc):
      self.file.close()

    def __getattr__(self, name):
      return getattr(self.file, name)

  def full_open(file, mode="r", *args, **kwargs):
    opened = real_open(file, mode, *args, **kwargs)
    return FullFile(opened) if ".write_test." in str(file) and "w" in mode else opened

  monkeypatch.setattr(builtins, "open", full_open)
  with pytest.raises(loop.WorkdirError, match="No space left on device"):
    loop.prepare_workdir(str(tmp_path / "run"))
  assert os.listdir(tmp_path / "run") == []


# --- gs:// workdirs: missing package, no network, no credentials ------------------------------


def _memory():
  """A private in-memory filesystem class (its own store), to stand in for gcsfs."""
  from fsspec.implementations.memory import MemoryFileSystem

  class Memory(MemoryFileSystem):
    store, pseudo_dirs = {}, [""]

  return Memory


@pytest.fixture
def gs(monkeypatch):
  """gs:// served by the filesystem class given to the returned function (default: memory)."""
  registry = importlib.import_module("fsspec.registry")._registry  # pylint: disable=protected-access
  clear = epath.backend.fsspec_backend._get_filesystem.cache_clear  # pylint: disable=protected-access

  def use(cls=None):
    cls = cls or _memory()
    monkeypatch.setitem(registry, "gcs", cls)
    clear()
    return cls

  yield use
  clear()


@pytest.fixture
def no_tensorboard(monkeypatch):
  import tensorboardX

  class NoTensorBoard:

    def __init__(self, logdir, **kwargs):
      del logdir, kwargs

    add_scalar = flush = close = lambda *args: None

  monkeypatch.setattr(tensorboardX, "SummaryWriter", NoTensorBoard)


def test_a_gs_workdir_without_gcsfs_names_the_tpu_extra(gs, monkeypatch):
  registry = importlib.import_module("fsspec.registry")._registry  # pylint: disable=protected-access
  gs()
  monkeypatch.delitem(registry, "gcs")
  monkeypatch.setitem(sys.modules, "gcsfs", None)  # `import gcsfs` fails, installed or not
  epath.backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access
  with pytest.raises(storage.StorageError) as failed:
    loop.train_and_evaluate(fashion_mnist_cnn, _tiny_config(), "gs://bucket/run")
  message = str(failed.value)
  assert "pip install 'jaxmodels[tpu]'" in message and "pip install gcsfs" in message, message
  assert "\n" not in message


class HttpError(Exception):
  """As gcsfs raises for a 401 from Cloud Storage."""


class DefaultCredentialsError(Exception):
  """As google-auth raises where no credentials are set up."""


def _unreachable(error, calls, wait=None):
  """A bucket whose every call fails with `error` (after `wait`, an Event, is set or 5 s), each
  failure logged with a traceback as gcsfs does."""

  class Unreachable(_memory()):

    def _open(self, path, mode="rb", **kwargs):
      calls.append(path)
      if wait is not None:
        wait.wait(5)
      logging.getLogger("gcsfs").exception("_request non-retriable exception: %s", error)
      raise error

    def info(self, path, **kwargs):
      return self._open(path)

  return Unreachable


@pytest.mark.parametrize(
    "error, says",
    [
        (
            OSError(
                "Cannot connect to host storage.googleapis.com:443 [Name or service not known]"
            ),
            "Cannot connect to host storage.googleapis.com",
        ),
        (HttpError("Anonymous caller does not have storage.objects.create access"), "Anonymous"),
        (DefaultCredentialsError("Your default credentials were not found."), "credentials"),
    ],
    ids=["no_network", "anonymous", "no_credentials"],
)
def test_an_unreachable_bucket_fails_fast_naming_the_credential_step(
    gs, capsys, monkeypatch, error, says
):
  calls = []
  bucket = gs(_unreachable(error, calls))
  data_read = []
  monkeypatch.setattr(fashion_mnist_cnn, "get_data", lambda config: data_read.append(1))
  with pytest.raises(storage.StorageError) as failed:
    loop.train_and_evaluate(fashion_mnist_cnn, _tiny_config(), "gs://bucket/run")
  message = str(failed.value)
  assert "gcloud auth application-default login" in message and "service account" in message
  assert says in message and "--workdir=gs://bucket/run cannot be written" in message, message
  assert len(calls) == 1 and not data_read and not bucket.store  # one probe, before anything
  out = capsys.readouterr()
  assert "Traceback" not in out.out + out.err


def test_a_bucket_that_does_not_answer_times_out_with_the_last_message(gs, monkeypatch):
  release = threading.Event()
  gs(_unreachable(OSError("Cannot connect to host storage.googleapis.com:443"), [], release))
  monkeypatch.setattr(storage, "PROBE_TIMEOUT_S", 0.5)
  logging.getLogger("gcsfs").debug("retrying after exception: Anonymous caller does not have")
  t = time.monotonic()
  try:
    with pytest.raises(storage.StorageError) as failed:
      loop.train_and_evaluate(fashion_mnist_cnn, _tiny_config(), "gs://bucket/run")
  finally:
    release.set()
  assert time.monotonic() - t < 4
  assert "no answer within 0.5 s" in str(failed.value)
  assert "gcloud auth application-default login" in str(failed.value)


def test_predict_on_an_unreachable_bucket_is_one_paragraph(gs):
  gs(_unreachable(OSError("Cannot connect to host storage.googleapis.com:443"), []))
  with pytest.raises(storage.StorageError, match="cannot be read: OSError: Cannot connect"):
    predict.load("gs://bucket/run")


# --- gs:// workdirs through etils.epath ------------------------------------------------------


def test_gs_metrics_are_buffered_and_uploaded_at_flushes(gs, no_tensorboard, monkeypatch):
  bucket = gs()
  uploads = []
  original = bucket._open  # pylint: disable=protected-access

  def counting_open(self, path, mode="rb", **kwargs):
    if "w" in mode and path.endswith("metrics.jsonl"):
      uploads.append(path)
    return original(self, path, mode, **kwargs)

  monkeypatch.setattr(bucket, "_open", counting_open)
  path = epath.Path("gs://bucket/run/metrics.jsonl")
  writer = metrics.MetricWriter("gs://bucket/run")
  for step in range(1, 101):
    writer.write(step, "train", {"loss": 1.0 / step})
  assert not uploads  # not one upload per record
  writer.flush()
  assert len(uploads) == 1 and len(path.read_text().splitlines()) == 100
  now = [time.monotonic()]
  monkeypatch.setattr(metrics.time, "monotonic", lambda: now[0])
  writer.write(101, "train", {"loss": 0.5})
  assert len(uploads) == 1
  now[0] += metrics.REMOTE_FLUSH_S  # a long stretch without checkpoints: uploaded by time
  writer.write(102, "train", {"loss": 0.5})
  assert len(uploads) == 2 and len(path.read_text().splitlines()) == 102
  writer.write(103, "train", {"loss": 0.5})
  writer.close()
  assert len(uploads) == 3
  # A resumed run keeps the records up to its checkpoint and drops the rest.
  writer = metrics.MetricWriter("gs://bucket/run", start_step=50)
  writer.close()
  steps = [json.loads(line)["step"] for line in path.read_text().splitlines()]
  assert steps == list(range(1, 51))


def test_local_metrics_get_each_record_at_once(tmp_path, no_tensorboard):
  writer = metrics.MetricWriter(str(tmp_path))
  writer.write(1, "train", {"loss": 2.0})
  assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {
      "step": 1,
      "split": "train",
      "loss": 2.0,
  }
  writer.close()


def test_the_records_up_to_a_checkpoint_are_flushed_before_it(tmp_path, monkeypatch):
  """On gs:// a crash loses at most the records after the last checkpoint, which the resumed
  run writes again."""
  events = []
  write, flush = metrics.MetricWriter.write, metrics.MetricWriter.flush
  monkeypatch.setattr(
      metrics.MetricWriter,
      "write",
      lambda self, step, *a: events.append(("record", step)) or write(self, step, *a),
  )
  monkeypatch.setattr(
      metrics.MetricWriter, "flush", lambda self: events.append(("flush",)) or flush(self)
  )
  save = checkpoint.Checkpoints.save
  monkeypatch.setattr(
      checkpoint.Checkpoints,
      "save",
      lambda self, state, meta: events.append(("save", meta["step"])) or save(self, state, meta),
  )
  loop.train_and_evaluate(fashion_mnist_cnn, _tiny_config(num_train_steps=20), str(tmp_path))
  saves = [i for i, e in enumerate(events) if e[0] == "save"]
  assert [events[i][1] for i in saves] == [10, 20]
  for i in saves:
    last_flush = max(j for j in range(i) if events[j][0] == "flush")
    assert not [e for e in events[last_flush:i] if e[0] == "record"], events


def test_unreadable_checkpoints_on_gs_are_set_aside_through_epath(gs):
  bucket = gs()
  root = epath.Path("gs://bucket/run/checkpoints")
  for step in (10, 20):
    (root / str(step) / "state").mkdir(parents=True)
    (root / str(step) / "state" / "data").write_text(f"step {step}")
  (root / "20.unreadable").mkdir(parents=True)  # set aside by an earlier run: kept too
  (root / "20.unreadable" / "old").write_text("older")
  reloaded = []

  class Manager:  # orbax's own needs google-cloud-storage for gs://, absent here

    def reload(self):
      reloaded.append(1)

  ckpts = object.__new__(checkpoint.Checkpoints)
  ckpts.directory, ckpts.manager = str(root), Manager()
  asides = ckpts._set_aside([str(root / "20")])  # pylint: disable=protected-access
  assert reloaded
  assert asides == ["gs://bucket/run/checkpoints/20.unreadable.2"]
  assert (root / "20.unreadable.2" / "state" / "data").read_text() == "step 20"
  assert (root / "20.unreadable" / "old").read_text() == "older"
  assert not (root / "20").exists() and (root / "10" / "state" / "data").exists()
  assert not os.path.exists("gs:") and bucket.store


def test_predict_reads_a_gs_workdir_through_epath(gs, monkeypatch):
  gs()
  config = _tiny_config()
  run = epath.Path("gs://bucket/run")
  (run / "checkpoints").mkdir(parents=True)
  (run / "run.json").write_text(json.dumps({"experiment": "experiments.fashion_mnist_cnn"}))
  (run / "config.json").write_text(config_lib.to_json(config))

  class Restored:
    """orbax reads gs:// itself (tensorstore), which the in-memory stand-in cannot serve."""

    def __init__(self, workdir, max_to_keep):
      assert workdir == "gs://bucket/run"

    def restore_latest(self, target):
      return target.replace(step=np.int32(7)), {}

    def close(self):
      pass

  monkeypatch.setattr(checkpoint, "Checkpoints", Restored)
  trained = predict.load("gs://bucket/run")
  assert trained.step == 7 and trained.config.batch_size == config.batch_size
  assert trained.experiment is fashion_mnist_cnn


# --- SIGTERM in a multi-process run without jax's preemption service ---------------------------


@pytest.fixture
def two_processes_without_the_preemption_service(monkeypatch):
  """jax.process_count() is 2 and the preemption sync point raises as without the service;
  `others` holds the signal each other process reports at a gather."""
  from jax.experimental import multihost_utils

  monkeypatch.setattr(jax, "process_count", lambda: 2)

  def no_service(step):
    raise RuntimeError("Preemption sync manager has not been initialized.")

  others = [0]
  monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", no_service)
  monkeypatch.setattr(
      multihost_utils, "process_allgather", lambda x: np.array([int(x), *others], np.int32)
  )
  placeholder = lambda signum, frame: None  # old code leaves SIGTERM alone: keep pytest alive
  previous = signal.signal(signal.SIGTERM, placeholder)
  yield others, placeholder
  signal.signal(signal.SIGTERM, previous)


def test_sigterm_without_the_preemption_service_still_stops(
    two_processes_without_the_preemption_service, capsys
):
  _, placeholder = two_processes_without_the_preemption_service
  with loop._Signals() as signals:  # pylint: disable=protected-access
    assert signals.poll(1) == 0
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.01)
    assert signals.poll(2) == signal.SIGTERM
  assert signal.getsignal(signal.SIGTERM) is placeholder  # restored
  assert capsys.readouterr().out.count("preemption service is off") == 1


def test_a_sigterm_to_another_process_stops_this_one_at_the_same_step(
    two_processes_without_the_preemption_service, capsys
):
  others, _ = two_processes_without_the_preemption_service
  with loop._Signals() as signals:  # pylint: disable=protected-access
    assert [signals.poll(step) for step in (1, 2, 3)] == [0, 0, 0]
    others[0] = signal.SIGTERM
    assert signals.poll(4) == signal.SIGTERM
  assert capsys.readouterr().out.count("preemption service is off") == 1
