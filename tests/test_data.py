"""Datasets on tiny fixtures written in the real raw formats: builders, batches, determinism,
resumption, per-process shards, exact-once evaluation, augmentation, errors."""

import glob
import os

import numpy as np
import pytest

from jaxmodels import data
from jaxmodels.data import datasets, formats, pipeline, prepare, testing
from jaxmodels.data.sets import cifar10, cmudict, digits, shakespeare
from jaxmodels.data.synthetic import pad_and_batch

IMAGE_SETS = ("fashion_mnist", "mnist", "digits", "cifar10")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """Every dataset prepared from a fixture (checksums off: the fixtures are not the releases)."""
  root = tmp_path_factory.mktemp("data")
  data_dir, content = str(root / "tfds"), {}
  for name in data.NAMES:
    manual = str(root / "manual" / name)
    content[name] = testing.write_raw(name, manual, seed=len(name))
    prepare.prepare(name, data_dir, manual, verify=False, log=lambda message: None)
  return data_dir, content


def load(prepared, name, **options):
  return data.load(name, data_dir=prepared[0], **options)


def rows(batches, key="inputs"):
  return np.concatenate([b[key][b["mask"] > 0] for b in batches])


# --- builders: what the prepared files hold -----------------------------------------------------


@pytest.mark.parametrize("name", IMAGE_SETS)
def test_image_builders_keep_every_pixel_and_label_in_order(prepared, name):
  ds = load(prepared, name, normalize=False)
  content = prepared[1][name]
  if name == "digits":
    images, labels = content
    content = {k: (images[i], labels[i]) for k, i in digits.split(len(labels)).items()}
  for split in ("train", "test"):
    images, labels = content[split]
    got = ds.tables[split].take(np.arange(len(labels)))
    np.testing.assert_array_equal(got["inputs"], images)
    np.testing.assert_array_equal(got["targets"], labels)
  train = content["train"][0].astype(np.float64) / ds.info["max_value"]
  np.testing.assert_allclose(ds.info["mean"], train.mean(axis=(0, 1, 2)), rtol=1e-6)
  np.testing.assert_allclose(ds.info["std"], train.std(axis=(0, 1, 2)), rtol=1e-6)
  assert ds.info["image_shape"] == content["train"][0].shape[1:]
  assert ds.info["num_classes"] == 10 and ds.eval_splits == ("test",)


def test_digits_split_is_the_documented_permutation():
  split = digits.split(1797)
  assert (len(split["train"]), len(split["test"])) == (1437, 360)
  order = np.random.default_rng(0).permutation(1797)
  np.testing.assert_array_equal(split["test"], np.sort(order[:360]))


def test_shakespeare_builder_splits_each_work_at_line_ends(prepared):
  ds = load(prepared, "shakespeare", block_size=16)
  works = prepared[1]["shakespeare"]
  vocab = ds.info["vocab"]
  assert vocab == sorted(set("".join(works.values())))
  for split in ("train", "validation", "test"):
    expected = "".join(shakespeare.split_text(works[w])[split] for w in sorted(works))
    assert "".join(vocab[i] for i in ds.text[split]) == expected
  for text in works.values():
    parts = shakespeare.split_text(text)
    assert "".join(parts.values()) == text
    assert parts["train"].endswith("\n") and parts["validation"].endswith("\n")
    assert 0.85 < len(parts["train"]) / len(text) < 0.95


def test_imdb_builder_tokens_vocabulary_and_hash_split(prepared):
  ds = load(prepared, "imdb", max_len=64, vocab_size=12)
  rows_ = prepared[1]["imdb"]
  split_of = {t: formats.hash_split(t, 80, 10) for t, _ in rows_}
  # Vocabulary: counts over the train split only, most frequent first, ties alphabetical.
  import collections

  counts = collections.Counter(
      w for t, _ in rows_ if split_of[t] == "train" for w in formats.tokenize_review(t)
  )
  ranked = sorted(counts, key=lambda w: (-counts[w], w))
  assert ds.info["vocab"] == ["<pad>", "<unk>"] + ranked[:10]
  assert load(prepared, "imdb", vocab_size=10**6).info["vocab"] == ["<pad>", "<unk>"] + ranked
  assert "rottenonlyword" not in counts  # rotten_tomatoes rows are not IMDB reviews
  for split in ("train", "validation", "test"):
    expected = [(t, y) for t, y in rows_ if split_of[t] == split]
    assert ds.num_examples(split) == len(expected)
    batch = ds.tables[split].take(np.arange(len(expected)))
    index = {w: i for i, w in enumerate(ds.info["vocab"])}
    for (text, label), ids, length, target in zip(
        expected, batch["inputs"], batch["lengths"], batch["targets"]
    ):
      words = formats.tokenize_review(text)[:64] or ["<unk>"]
      assert length == len(words) and target == label
      np.testing.assert_array_equal(ids[:length], [index.get(w, 1) for w in words])
      assert not ids[length:].any()


def test_tokenizer():
  assert formats.tokenize_review("It's GREAT!<br /><br />Not bad, 10/10?") == [
      "it's",
      "great",
      "!",
      "not",
      "bad",
      "10",
      "10",
      "?",
  ]


def test_cmudict_builder_pairs_vocabularies_and_lengths(prepared):
  ds = load(prepared, "cmudict")
  pairs = prepared[1]["cmudict"]
  info = ds.info
  assert info["src_vocab"][:3] == ["<pad>", "<bos>", "<eos>"] == info["tgt_vocab"][:3]
  assert info["src_len"] == max(len(w) for w, _ in pairs)
  assert info["tgt_len"] == max(len(p) for _, p in pairs) + 2
  seen = 0
  for split in ("train", "validation", "test"):
    expected = [(w, p) for w, p in pairs if formats.hash_split(w, 90, 5) == split]
    batch = ds.tables[split].take(np.arange(len(expected)))
    for (word, phonemes), src, tgt in zip(expected, batch["inputs"], batch["targets"]):
      assert "".join(info["src_vocab"][i] for i in src if i) == word
      body = [info["tgt_vocab"][i] for i in tgt[1 : len(phonemes) + 1]]
      assert tgt[0] == 1 and body == phonemes and tgt[len(phonemes) + 1] == 2
      assert not tgt[len(phonemes) + 2 :].any()
    seen += len(expected)
  assert seen == len(pairs)  # alternates 'word(2)' and comments did not add pairs


def test_cmudict_reader_keeps_first_pronunciation(tmp_path):
  path = tmp_path / "d.dict"
  path.write_text("a AH0\nabc EY1 B # note\na(2) EY1\nabc(2) X\n")
  assert cmudict.read(str(path)) == [("a", ["AH0"]), ("abc", ["EY1", "B"])]


def test_cmudict_max_lengths_drop_longer_pairs(prepared):
  ds = load(prepared, "cmudict", max_src_len=4, max_tgt_len=6)
  pairs = prepared[1]["cmudict"]
  kept = [w for w, p in pairs if len(w) <= 4 and len(p) <= 4]
  assert sum(ds.num_examples(s) for s in ("train", "validation", "test")) == len(kept)
  assert sum(ds.info["dropped"].values()) == len(pairs) - len(kept)
  batch = next(ds.train_batches(8, seed=0))
  assert batch["inputs"].shape == (8, 4) and batch["targets"].shape == (8, 6)


def test_length_buckets_hold_a_half_a_quarter_and_the_rest():
  lengths = np.arange(64) % 16 + 1  # 4 examples of each length 1..16
  buckets = pipeline.length_buckets(lengths, 3)
  np.testing.assert_array_equal(np.unique(buckets), [0, 1, 2])
  for b, (low, high) in enumerate([(1, 8), (9, 12), (13, 16)]):
    assert set(lengths[buckets == b]) == set(range(low, high + 1))
  assert not pipeline.length_buckets(np.full(10, 7), 4).any()  # equal lengths share a bucket
  with pytest.raises(ValueError, match="length_buckets must be >= 1"):
    pipeline.length_buckets(lengths, 0)


def test_bucketed_order_draws_each_batch_from_one_bucket_once_per_epoch():
  buckets = np.repeat([0, 1, 2], [40, 21, 11])
  order = pipeline.BucketedOrder(buckets, batch_size=5, seed=3)
  assert order.batches_per_epoch == 8 + 4 + 2
  epochs = []
  for epoch in range(2):
    seen = []
    for step in range(epoch * 14, (epoch + 1) * 14):
      rows, bucket = order(step)
      assert len(rows) == 5 and set(buckets[rows]) == {bucket}
      seen.extend(rows)
    assert len(set(seen)) == len(seen) == 70  # no example twice; one of each bucket left over
    epochs.append(seen)
  assert epochs[0] != epochs[1]
  again = pipeline.BucketedOrder(buckets, batch_size=5, seed=3)
  np.testing.assert_array_equal(again(20)[0], order(20)[0])
  with pytest.raises(ValueError, match="no length bucket holds a whole batch of 50"):
    pipeline.BucketedOrder(buckets, batch_size=50, seed=0)


def test_cmudict_length_buckets_cut_only_padding(prepared):
  ds = load(prepared, "cmudict", length_buckets=3)
  full = load(prepared, "cmudict")
  shapes = ds.info["train_shapes"]
  assert len(shapes) == 3 and full.info["train_shapes"] == [(full.src_len, full.tgt_len)]
  assert max(s for s, _ in shapes) == full.src_len and max(t for _, t in shapes) == full.tgt_len
  assert min(s for s, _ in shapes) < full.src_len
  table = full.tables["train"]
  inputs, targets = table.arrays["inputs"], table.arrays["targets"]
  seen_shapes = set()
  for batch in next_n(ds.train_batches(8, seed=1), 20):
    src, tgt = batch["inputs"].shape[1], batch["targets"].shape[1]
    assert (src, tgt) in shapes
    seen_shapes.add((src, tgt))
    for row_in, row_tgt in zip(batch["inputs"], batch["targets"]):
      match = np.flatnonzero(
          (inputs[:, :src] == row_in).all(1) & (targets[:, :tgt] == row_tgt).all(1)
      )
      assert len(match) >= 1
      assert not inputs[match[0], src:].any() and not targets[match[0], tgt:].any()
  assert len(seen_shapes) > 1
  evaluated = next(ds.eval_batches("test", 8))
  assert evaluated["inputs"].shape[1] == full.src_len  # evaluation keeps the full lengths
  with pytest.raises(ValueError, match="length_buckets must be >= 0"):
    load(prepared, "cmudict", length_buckets=-1)


def test_imdb_length_buckets_cut_only_padding(prepared):
  ds = load(prepared, "imdb", max_len=64, length_buckets=2)
  shapes = ds.info["train_shapes"]
  assert len(shapes) == 2 and shapes[0][0] < shapes[1][0] <= 64
  seen = set()
  for batch in next_n(ds.train_batches(4, seed=0), 12):
    (length,) = shapes[[s[0] for s in shapes].index(batch["inputs"].shape[1])]
    seen.add(length)
    assert batch["lengths"].max() <= length
    assert not (batch["inputs"] * (np.arange(length) >= batch["lengths"][:, None])).any()
  assert len(seen) == 2
  assert next(ds.eval_batches("test", 4))["inputs"].shape[1] == 64
  with pytest.raises(ValueError, match="needs the reviews in memory"):
    load(prepared, "imdb", length_buckets=2, in_memory=False)


# --- the Dataset contract --------------------------------------------------------------------

CASES = [
    ("fashion_mnist", {}),
    ("fashion_mnist", {"augment": True}),
    ("cifar10", {"augment": True}),
    ("digits", {}),
    ("imdb", {"max_len": 16}),
    ("imdb", {"max_len": 64, "length_buckets": 2}),
    ("cmudict", {}),
    ("cmudict", {"length_buckets": 3}),
    ("shakespeare", {"block_size": 16}),
]


@pytest.mark.parametrize("name,options", CASES)
def test_same_seed_same_batches_other_seed_other_batches(prepared, name, options):
  take = lambda seed: [next_n(load(prepared, name, **options).train_batches(8, seed), 3)]
  a, b, c = take(1), take(1), take(2)
  for x, y in zip(a[0], b[0]):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert any(not np.array_equal(x["inputs"], z["inputs"]) for x, z in zip(a[0], c[0]))


def next_n(iterator, n):
  return [next(iterator) for _ in range(n)]


@pytest.mark.parametrize("name,options", CASES)
def test_resume_at_step_s_gives_the_same_batches(prepared, name, options):
  ds = load(prepared, name, **options)
  from_zero = next_n(ds.train_batches(8, seed=3), 12)
  resumed = next_n(ds.train_batches(8, seed=3, start_step=7), 5)
  for x, y in zip(from_zero[7:], resumed):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


@pytest.mark.parametrize("name,options", CASES)
@pytest.mark.parametrize("process_count", [2, 4])
def test_processes_take_disjoint_rows_of_the_global_batch(prepared, name, options, process_count):
  ds = load(prepared, name, **options)
  whole = next_n(ds.train_batches(8, seed=5, start_step=2), 3)
  parts = [
      next_n(
          ds.train_batches(8, seed=5, start_step=2, process_index=p, process_count=process_count), 3
      )
      for p in range(process_count)
  ]
  for step in range(3):
    for k in whole[step]:
      np.testing.assert_array_equal(
          np.concatenate([parts[p][step][k] for p in range(process_count)]), whole[step][k]
      )
      assert parts[0][step][k].shape[0] == 8 // process_count


@pytest.mark.parametrize("name", ["fashion_mnist", "imdb", "cmudict", "digits"])
def test_each_epoch_is_a_permutation_and_epochs_differ(prepared, name):
  ds = load(prepared, name)
  n = ds.num_examples("train")
  order = pipeline.EpochPermutation(n, seed=9)
  first, second = order(np.arange(n)), order(np.arange(n, 2 * n))
  assert sorted(first) == list(range(n)) == sorted(second)
  assert not np.array_equal(first, second)
  # The batches follow that order: batch size 1 makes position = step.
  batches = next_n(ds.train_batches(1, seed=9), n + 2)
  table = ds.tables["train"].take(np.concatenate([first, second[:2]]))
  np.testing.assert_array_equal(np.concatenate([b["targets"] for b in batches]), table["targets"])


@pytest.mark.parametrize("name,options", CASES)
@pytest.mark.parametrize("batch_size,process_count", [(8, 1), (7, 1), (8, 2), (12, 4)])
def test_eval_covers_every_example_once_like_pad_and_batch(
    prepared, name, options, batch_size, process_count
):
  ds = load(prepared, name, **options)
  split = ds.eval_splits[-1]
  n = ds.num_examples(split)
  everything = ds._finish(ds.tables[split].take(np.arange(n)))
  per_process = [
      list(ds.eval_batches(split, batch_size, process_index=p, process_count=process_count))
      for p in range(process_count)
  ]
  assert len({len(b) for b in per_process}) == 1  # every process runs the same number of steps
  for p, batches in enumerate(per_process):
    reference = list(pad_and_batch(everything, batch_size, p, process_count))
    assert len(batches) == len(reference) == -(-n // batch_size)
    for got, want in zip(batches, reference):
      assert got.keys() == want.keys()
      for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6)
        assert got[k].dtype == want[k].dtype
  mask_total = sum(b["mask"].sum() for batches in per_process for b in batches)
  assert mask_total == n


def test_eval_batches_of_an_unknown_split_name_the_splits(prepared):
  ds = load(prepared, "mnist")
  with pytest.raises(KeyError, match="test"):
    list(ds.eval_batches("validation", 8))


# --- images: normalisation and augmentation -----------------------------------------------


def test_normalisation_uses_the_train_mean_and_std(prepared):
  raw = load(prepared, "cifar10", normalize=False)
  norm = load(prepared, "cifar10")
  a, b = next(raw.train_batches(8, seed=0)), next(norm.train_batches(8, seed=0))
  expected = (a["inputs"] - np.float32(norm.info["mean"])) / np.float32(norm.info["std"])
  np.testing.assert_allclose(b["inputs"], expected, rtol=1e-5, atol=1e-6)
  assert a["inputs"].min() >= 0 and a["inputs"].max() <= 1 and b["inputs"].dtype == np.float32


def test_crop_and_flip_matches_a_per_image_reference():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 255, (6, 5, 7, 3)).astype(np.uint8)
  dy, dx = rng.integers(0, 5, 6), rng.integers(0, 5, 6)
  flip = np.array([0, 1, 0, 1, 1, 0], bool)
  got = pipeline.crop_and_flip(images, dy, dx, flip, padding=2)
  for i in range(6):
    padded = np.zeros((9, 11, 3), np.uint8)
    padded[2:7, 2:9] = images[i]
    want = padded[dy[i] : dy[i] + 5, dx[i] : dx[i] + 7]
    np.testing.assert_array_equal(got[i], want[:, ::-1] if flip[i] else want)


def test_augmented_batches_are_crops_of_the_unaugmented_ones(prepared):
  plain = load(prepared, "cifar10", normalize=False)
  aug = load(prepared, "cifar10", normalize=False, augment=True)
  a, b = next(plain.train_batches(16, seed=4, start_step=3)), next(
      aug.train_batches(16, seed=4, start_step=3)
  )
  np.testing.assert_array_equal(a["targets"], b["targets"])
  assert b["inputs"].shape == a["inputs"].shape == (16, 32, 32, 3)
  u = pipeline.uniforms(4, pipeline.process_positions(3, 16, 0, 1), 3)
  dy, dx, flip = (u[:, 0] * 9).astype(int), (u[:, 1] * 9).astype(int), u[:, 2] < 0.5
  images = np.round(a["inputs"] * 255).astype(np.uint8)
  want = pipeline.crop_and_flip(images, dy, dx, flip, 4).astype(np.float32) / 255
  np.testing.assert_allclose(b["inputs"], want, atol=1e-6)
  assert not np.array_equal(a["inputs"], b["inputs"])


def test_augmentation_randomness_is_uniform_and_position_keyed():
  u = pipeline.uniforms(7, np.arange(20000), 3)
  assert u.min() >= 0 and u.max() < 1
  assert abs(u.mean() - 0.5) < 0.01
  offsets = np.bincount((u[:, 0] * 9).astype(int), minlength=9) / 20000
  assert np.all(np.abs(offsets - 1 / 9) < 0.01)
  assert abs((u[:, 2] < 0.5).mean() - 0.5) < 0.02
  assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.03
  np.testing.assert_array_equal(pipeline.uniforms(7, np.arange(5, 9), 3), u[5:9])
  assert not np.array_equal(pipeline.uniforms(8, np.arange(5), 3), u[:5])


def test_augmentation_is_off_in_evaluation(prepared):
  plain, aug = load(prepared, "fashion_mnist"), load(prepared, "fashion_mnist", augment=True)
  for a, b in zip(plain.eval_batches("test", 8), aug.eval_batches("test", 8)):
    np.testing.assert_array_equal(a["inputs"], b["inputs"])


def test_validation_size_carves_a_fixed_validation_split(prepared):
  ds = load(prepared, "mnist", validation_size=10)
  assert ds.eval_splits == ("validation", "test")
  assert (ds.num_examples("train"), ds.num_examples("validation")) == (30, 10)
  full = load(prepared, "mnist").tables["train"].take(np.arange(40))["targets"]
  held = np.sort(np.random.default_rng(0).permutation(40)[:10])
  np.testing.assert_array_equal(rows(ds.eval_batches("validation", 4), "targets"), full[held])


@pytest.mark.parametrize("name,options", [("mnist", {}), ("shakespeare", {"block_size": 16})])
def test_num_batches_serves_a_fixed_sample_of_the_split(prepared, name, options):
  ds = load(prepared, name, **options)
  n = ds.num_examples("test")
  full = rows(ds.eval_batches("test", 4), "targets")
  sample = list(ds.eval_batches("test", 4, num_batches=2))
  assert len(sample) == 2 and all(b["mask"].all() for b in sample)
  again = rows(ds.eval_batches("test", 4, num_batches=2), "targets")
  np.testing.assert_array_equal(rows(sample, "targets"), again)  # the same rows every call
  np.testing.assert_array_equal(again, full[np.sort(np.random.default_rng(0).permutation(n)[:8])])
  whole = rows(ds.eval_batches("test", 4, num_batches=n), "targets")  # more than the split
  np.testing.assert_array_equal(whole, full)


@pytest.mark.parametrize(
    "name,options",
    [("fashion_mnist", {"augment": True}), ("imdb", {"max_len": 8, "vocab_size": 6})],
)
def test_streaming_from_files_gives_the_in_memory_batches(prepared, name, options):
  memory = load(prepared, name, **options)
  stream = load(prepared, name, in_memory=False, **options)
  for a, b in zip(next_n(memory.train_batches(8, 1), 6), next_n(stream.train_batches(8, 1), 6)):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  for a, b in zip(memory.eval_batches("test", 5), stream.eval_batches("test", 5)):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


# --- text: windows, truncation ------------------------------------------------------------


def test_character_windows_tile_each_epoch_from_a_random_offset(prepared):
  ds = load(prepared, "shakespeare", block_size=16)
  text = ds.text["train"]
  per_epoch = ds.num_examples("train")
  assert per_epoch == (len(text) - 16) // 17
  orders = []
  for batch in next_n(ds.train_batches(per_epoch, seed=2), 2):  # one batch = one epoch
    np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
    windows = np.concatenate([batch["inputs"], batch["targets"][:, -1:]], axis=1)
    for offset in range(17):
      tiles = {text[offset + 17 * k : offset + 17 * (k + 1)].tobytes(): k for k in range(per_epoch)}
      if all(w.tobytes() in tiles for w in windows):
        break
    else:
      raise AssertionError("the windows of an epoch are not tiles of the text")
    order = [tiles[w.tobytes()] for w in windows]
    assert sorted(order) == list(range(per_epoch))  # every tile once
    orders.append(order)
  assert orders[0] != orders[1]
  assert ds.info["block_size"] == 16 and ds.info["vocab_size"] == len(ds.info["vocab"])


def test_character_eval_windows_predict_every_character_once(prepared):
  ds = load(prepared, "shakespeare", block_size=16)
  for split in ("validation", "test"):
    text = ds.text[split]
    targets = rows(ds.eval_batches(split, 5), "targets").reshape(-1)
    count = (len(text) - 1) // 16
    np.testing.assert_array_equal(targets, text[1 : 1 + count * 16])
    assert len(text) - 1 - count * 16 < 16
  capped = load(prepared, "shakespeare", block_size=16, max_eval_windows=3)
  assert capped.num_examples("validation") == 3


def test_imdb_max_len_and_vocab_size(prepared):
  ds = load(prepared, "imdb", max_len=5, vocab_size=4)
  batch = next(ds.train_batches(16, seed=0))
  assert batch["inputs"].shape == (16, 5) and batch["inputs"].max() < 4
  assert 1 <= batch["lengths"].min() and batch["lengths"].max() <= 5
  positions = np.arange(5)[None] < batch["lengths"][:, None]
  assert np.all((batch["inputs"] > 0) == positions)
  assert ds.info["vocab_size"] == 4 == len(ds.info["vocab"]) and ds.info["seq_len"] == 5


# --- errors --------------------------------------------------------------------------------


def test_load_of_an_unprepared_dataset_names_the_prepare_command(tmp_path):
  with pytest.raises(data.DatasetNotPreparedError) as e:
    data.load("fashion_mnist", data_dir=str(tmp_path))
  assert f"python -m jaxmodels.data.prepare fashion_mnist --data_dir={tmp_path}" in str(e.value)
  assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, data.USER_ERRORS)


def test_load_rejects_unknown_datasets_and_options(prepared):
  with pytest.raises(data.DataError, match="fashion_mnist"):
    data.load("fashion", data_dir=prepared[0])
  with pytest.raises(TypeError, match="block_size, max_eval_windows"):
    load(prepared, "shakespeare", augment=True)


def test_a_damaged_prepared_file_is_named(prepared, tmp_path):
  import shutil

  data_dir = str(tmp_path / "copy")
  shutil.copytree(os.path.join(prepared[0], "mnist"), os.path.join(data_dir, "mnist"))
  path = glob.glob(os.path.join(data_dir, "mnist", "*", "*-test.array_record*"))[0]
  with open(path, "r+b") as f:
    f.truncate(100)
  with pytest.raises(data.CorruptDataError) as e:
    data.load("mnist", data_dir=data_dir)
  assert path in str(e.value) and "prepare mnist" in str(e.value)


def test_a_damaged_raw_file_is_named(tmp_path):
  testing.write_raw("mnist", str(tmp_path))
  path = str(tmp_path / "train-labels-idx1-ubyte.gz")
  with open(path, "wb") as f:
    f.write(b"\x1f\x8b not really gzip")
  with pytest.raises(data.CorruptDataError, match="train-labels-idx1-ubyte.gz"):
    formats.read_mnist_split(str(tmp_path), "train")
  truncated = testing.idx_bytes(np.zeros((3, 4, 4), np.uint8))[:-5]
  with pytest.raises(data.CorruptDataError, match="x.idx: has 59 bytes"):
    formats.parse_idx(truncated, "x.idx")


def test_cifar_reader_refuses_code_in_pickles(tmp_path):
  import io
  import pickle
  import tarfile

  class Evil:

    def __reduce__(self):
      return (os.system, ("echo pwned",))

  path = str(tmp_path / cifar10.ARCHIVE)
  with tarfile.open(path, "w:gz") as tar:
    for member in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
      blob = pickle.dumps({b"data": Evil()})
      info = tarfile.TarInfo(f"cifar-10-batches-py/{member}")
      info.size = len(blob)
      tar.addfile(info, io.BytesIO(blob))
  with pytest.raises(data.CorruptDataError, match="refusing to load"):
    cifar10.read(path)


def test_default_data_dir(monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", "/somewhere")
  assert data.default_data_dir() == "/somewhere" == datasets.default_data_dir()
  monkeypatch.delenv("TFDS_DATA_DIR")
  assert data.default_data_dir() == os.path.expanduser("~/tensorflow_datasets")
