"""torchvision ResNets <-> jaxmodels.models.convert: the references are real torchvision models."""

import functools
import os
import re
import subprocess
import sys
import urllib.error

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.models import convert
from jaxmodels.models.resnet import BatchNorm, ResNet18

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

NUM_CLASSES = 10


def torch_resnet(arch: str, seed: int = 0, num_classes: int = NUM_CLASSES, in_channels: int = 3):
  """A torchvision ResNet with random weights and random BatchNorm statistics, in eval mode."""
  torch.manual_seed(seed)
  model = getattr(torchvision.models, arch)(num_classes=num_classes)
  if in_channels != 3:
    model.conv1 = torch.nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.2, 0.2)
        m.running_mean.uniform_(-0.3, 0.3)
        m.running_var.uniform_(0.5, 2.0)
        m.num_batches_tracked.fill_(7)
  return model.eval()


def images(shape=(2, 32, 32, 3), seed=0) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def torch_logits(model, x_nhwc: np.ndarray, train: bool = False) -> np.ndarray:
  model.train(train)
  with torch.no_grad():
    out = model(torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2).copy())).numpy()
  model.eval()
  return out


@functools.cache
def jitted(module):
  """One compile per module configuration, shared by the tests."""
  return jax.jit(lambda v, x: module.apply(v, x))


def assert_logits_close(ours, ref):
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def random_variables(module, in_channels=3, seed=0):
  """Random variables of our ResNet's structure (He-scaled kernels, random BN statistics)."""
  x = jax.ShapeDtypeStruct((1, 32, 32, in_channels), jnp.float32)
  shapes = jax.eval_shape(module.init, jax.random.key(0), x)
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == "kernel":
      fan_in = np.prod(leaf.shape[:-1])
      return rng.normal(0, np.sqrt(2 / fan_in), leaf.shape).astype(np.float32)
    low, high = {"scale": (0.5, 1.5), "var": (0.5, 2.0)}.get(name, (-0.2, 0.2))
    return rng.uniform(low, high, leaf.shape).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def state_dict_arrays(model) -> dict[str, np.ndarray]:
  return {k: v.numpy() for k, v in model.state_dict().items()}


# ---------- import


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_import_gives_torchvision_eval_logits(arch):
  model = torch_resnet(arch)
  module, variables = convert.load_torchvision(model.state_dict(), arch)
  assert module.num_classes == NUM_CLASSES and module.bn_running_variance == "unbiased"
  assert set(variables) == {"params", "batch_stats"}
  x = images()
  assert_logits_close(np.asarray(jitted(module)(variables, x)), torch_logits(model, x))


def test_resnet34_maps_every_tensor_and_round_trips(tmp_path):
  model = torch_resnet("resnet34", num_classes=5, in_channels=1)
  path = tmp_path / "resnet34.pth"
  torch.save(model.state_dict(), path)
  module, variables = convert.load_torchvision(path, "resnet34")
  assert module.num_classes == 5
  expected = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
  assert jax.tree.structure(expected) == jax.tree.structure(variables)
  assert jax.tree.map(jnp.shape, expected) == jax.tree.map(jnp.shape, variables)
  # A torchvision tensor lands in the layer that plays its role.
  block = variables["params"]["BasicBlock_3"]  # layer2.0: the first block of stage 2
  np.testing.assert_array_equal(
      block["proj_conv"]["kernel"],
      model.layer2[0].downsample[0].weight.detach().numpy().transpose(2, 3, 1, 0),
  )
  np.testing.assert_array_equal(
      variables["batch_stats"]["BasicBlock_15"]["BatchNorm_1"]["var"],
      model.layer4[2].bn2.running_var.numpy(),
  )
  # Out again: every tensor comes back bit for bit (num_batches_tracked is written as 0).
  back = convert.torchvision_state_dict(variables, "resnet34")
  original = state_dict_arrays(model)
  assert list(back) == list(original)  # torchvision's order too
  for name, value in original.items():
    if name.endswith("num_batches_tracked"):
      assert back[name].dtype == np.int64 and back[name].shape == () and back[name] == 0
    else:
      np.testing.assert_array_equal(back[name], value, err_msg=name)


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
def test_arch_is_inferred_from_the_names(arch):
  state = getattr(torchvision.models, arch)().state_dict()
  assert convert.infer_torchvision_arch(state) == arch
  del state["bn1.num_batches_tracked"]  # files from torch < 0.4.1 lack them
  assert convert.infer_torchvision_arch(state) == arch


# ---------- export


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_export_loads_strictly_into_torchvision(arch, tmp_path):
  module = convert.TORCHVISION_ARCHS[arch](num_classes=NUM_CLASSES, bn_running_variance="unbiased")
  variables = random_variables(module, seed=1)
  path = tmp_path / f"{arch}.pth"
  convert.save_torchvision(variables, path, arch)
  model = getattr(torchvision.models, arch)(num_classes=NUM_CLASSES)
  model.load_state_dict(torch.load(path), strict=True)
  x = images(seed=2)
  assert_logits_close(np.asarray(jitted(module)(variables, x)), torch_logits(model.eval(), x))
  assert os.listdir(tmp_path) == [path.name]  # no temporary file left


def test_safetensors_round_trip_is_exact(tmp_path):
  model = torch_resnet("resnet18")
  _, variables = convert.load_torchvision(model.state_dict(), "resnet18")
  path = tmp_path / "resnet18.safetensors"
  convert.save_torchvision(variables, path, "resnet18")
  from safetensors.torch import load_file

  reference = torchvision.models.resnet18(num_classes=NUM_CLASSES)
  reference.load_state_dict(load_file(path), strict=True)
  for name, value in state_dict_arrays(model).items():
    if not name.endswith("num_batches_tracked"):
      np.testing.assert_array_equal(reference.state_dict()[name].numpy(), value, err_msg=name)
  _, again = convert.load_torchvision(path, "resnet18")
  jax.tree.map(np.testing.assert_array_equal, again, variables)


def test_convert_imports_and_reads_safetensors_without_torch(tmp_path):
  model = torch_resnet("resnet18", num_classes=3)
  src = tmp_path / "in.safetensors"
  from safetensors.torch import save_file

  save_file(model.state_dict(), src)
  code = f"""
import sys
from jaxmodels.models import convert
assert "torch" not in sys.modules, "importing convert imported torch"
sys.modules["torch"] = None  # any import of torch now fails
module, variables = convert.load_torchvision({str(src)!r}, "resnet18")
convert.save_torchvision(variables, {str(tmp_path / "out.safetensors")!r}, "resnet18")
print(module.num_classes)
"""
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
  assert out.returncode == 0, out.stderr
  assert out.stdout.split()[-1] == "3"
  _, a = convert.load_torchvision(src, "resnet18")
  _, b = convert.load_torchvision(tmp_path / "out.safetensors", "resnet18")
  jax.tree.map(np.testing.assert_array_equal, a, b)


# ---------- BatchNorm conventions


def test_train_step_statistics_equal_torchvision():
  model = torch_resnet("resnet18")
  module, variables = convert.load_torchvision(model.state_dict(), "resnet18")
  x = images((2, 64, 64, 3), seed=3)
  ref = torch_logits(model, x, train=True)
  step = jax.jit(lambda v, xx: module.apply(v, xx, train=True, mutable=["batch_stats"]))
  logits, updated = step(variables, x)
  assert_logits_close(np.asarray(logits), ref)
  torch_stats = convert.torchvision_state_dict(
      {"params": variables["params"], "batch_stats": updated["batch_stats"]}, "resnet18"
  )
  for name, value in state_dict_arrays(model).items():
    if name.endswith(("running_mean", "running_var")):
      np.testing.assert_allclose(torch_stats[name], value, rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("running_variance,ddof", [("biased", 0), ("unbiased", 1)])
def test_batchnorm_running_variance_options(running_variance, ddof):
  x = images((3, 2, 2, 4), seed=4) * 2.0 + 1.0  # n = 12 values per channel
  bn = BatchNorm(use_running_average=False, momentum=0.9, running_variance=running_variance)
  variables = bn.init(jax.random.key(0), x)
  y, state = bn.apply(variables, x, mutable=["batch_stats"])
  flat = x.reshape(-1, 4).astype(np.float64)
  np.testing.assert_allclose(state["batch_stats"]["var"], 0.9 + 0.1 * flat.var(0, ddof=ddof), 1e-5)
  np.testing.assert_allclose(state["batch_stats"]["mean"], 0.1 * flat.mean(0), 1e-5, 1e-7)
  # The batch itself is normalised with the biased variance either way, as torch does.
  torch_bn = torch.nn.BatchNorm2d(4, momentum=0.1, eps=1e-5).train()
  with torch.no_grad():
    ref = torch_bn(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
  if running_variance == "unbiased":
    np.testing.assert_allclose(state["batch_stats"]["var"], torch_bn.running_var.numpy(), 1e-5)


def test_unbiased_variance_counts_values_over_the_pmap_axis():
  x = images((4, 2, 2, 3), seed=5)  # 2 devices x 2 examples: n = 16 per channel, not 8
  bn = BatchNorm(
      use_running_average=False, momentum=0.0, running_variance="unbiased", axis_name="batch"
  )
  variables = bn.init(jax.random.key(0), x[:2])
  step = jax.pmap(
      lambda v, xx: bn.apply(v, xx, mutable=["batch_stats"])[1],
      axis_name="batch",
      in_axes=(None, 0),
      devices=jax.devices()[:2],
  )
  var = step(variables, x.reshape(2, 2, 2, 2, 3))["batch_stats"]["var"]
  expected = x.reshape(-1, 3).astype(np.float64).var(0, ddof=1)
  np.testing.assert_allclose(var[0], expected, rtol=1e-5)
  np.testing.assert_allclose(var[1], expected, rtol=1e-5)


def test_bad_running_variance_is_an_error():
  with pytest.raises(ValueError, match="'biased' or 'unbiased'"):
    BatchNorm(running_variance="sample").init(jax.random.key(0), jnp.zeros((2, 3)))


# ---------- bad input


def test_wrong_arch_file_names_both_archs_and_keys(tmp_path):
  path = tmp_path / "resnet34.pth"
  torch.save(torchvision.models.resnet34().state_dict(), path)
  with pytest.raises(convert.ConvertError) as e:
    convert.load_torchvision(path, "resnet50")
  message = str(e.value)
  assert str(path) in message and "resnet50" in message
  assert "85 missing keys (layer1.0.conv3.weight, layer1.0.bn3.weight," in message
  assert "shape mismatches (layer1.0.conv1.weight: (64, 64, 3, 3) instead of" in message
  assert "are those of torchvision resnet34" in message
  with pytest.raises(convert.ConvertError, match=r"does not match torchvision resnet34: \d+ miss"):
    convert.load_torchvision(torchvision.models.resnet18().state_dict(), "resnet34")


def test_missing_unexpected_and_misshapen_keys_are_listed():
  state = torchvision.models.resnet18(num_classes=4).state_dict()
  del state["layer3.1.bn2.running_var"]
  state["layer3.1.bn2.extra"] = torch.zeros(1)
  state["fc.bias"] = torch.zeros(5)
  with pytest.raises(convert.ConvertError) as e:
    convert.load_torchvision(state, "resnet18")
  message = str(e.value)
  assert "1 missing keys (layer3.1.bn2.running_var)" in message
  assert "1 unexpected keys (layer3.1.bn2.extra)" in message
  assert "1 shape mismatches (fc.bias: (5,) instead of (4,))" in message
  with pytest.raises(convert.ConvertError, match="not a torchvision resnet18, resnet34, resnet50"):
    convert.load_torchvision(state)


@pytest.mark.parametrize("name", ["missing.pth", "missing.safetensors"])
def test_missing_file_is_named(name, tmp_path):
  with pytest.raises(convert.ConvertError, match=re.escape(f"{tmp_path / name} not found")):
    convert.load_torchvision(tmp_path / name, "resnet18")


def test_corrupt_files_are_named(tmp_path):
  whole = tmp_path / "whole.pth"
  torch.save(torchvision.models.resnet18().state_dict(), whole)
  truncated = tmp_path / "truncated.pth"
  truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
  with pytest.raises(convert.ConvertError, match=f"cannot read {truncated} as a torch state dict"):
    convert.load_torchvision(truncated, "resnet18")
  garbage = tmp_path / "garbage.safetensors"
  garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header at all")
  with pytest.raises(convert.ConvertError, match=f"cannot read {garbage} as safetensors"):
    convert.load_torchvision(garbage, "resnet18")
  not_a_dict = tmp_path / "tensor.pth"
  torch.save(torch.zeros(3), not_a_dict)
  with pytest.raises(convert.ConvertError, match="holds a Tensor, not a state dict"):
    convert.load_torchvision(not_a_dict, "resnet18")


def test_unknown_arch_is_an_error():
  with pytest.raises(convert.ConvertError, match="'resnet101': use one of resnet18, resnet34"):
    convert.load_torchvision({}, "resnet101")


def test_export_of_other_variables_is_an_error(tmp_path):
  variables = random_variables(ResNet18(num_classes=3))
  with pytest.raises(convert.ConvertError, match="not those of a torchvision resnet50: "):
    convert.save_torchvision(variables, tmp_path / "x.pth", "resnet50")
  cifar = random_variables(ResNet18(num_classes=3, stem="cifar"))
  with pytest.raises(convert.ConvertError, match=r"stem_conv/kernel: \(3, 3, 3, 64\) instead of"):
    convert.save_torchvision(cifar, tmp_path / "x.pth", "resnet18")
  with pytest.raises(convert.ConvertError, match="collections params, batch_stats only"):
    convert.save_torchvision({"params": variables["params"]}, tmp_path / "x.pth", "resnet18")
  assert not os.listdir(tmp_path)


# ---------- torchvision:<arch>:<weights> sources


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
  """An empty torch hub; downloads fail as they do offline."""
  monkeypatch.setenv("TORCH_HOME", str(tmp_path))

  def offline(url, *args, **kwargs):
    raise urllib.error.URLError("[Errno -2] Name or service not known")

  monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
  return tmp_path


def test_offline_source_names_the_file_to_place(torch_home):
  expected = torch_home / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"
  with pytest.raises(convert.ConvertError) as e:
    convert.load_torchvision("torchvision:resnet50:IMAGENET1K_V2")
  message = str(e.value)
  assert f"place that file at {expected}" in message
  assert "https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in message


def test_source_file_already_in_torch_hub_loads_offline(torch_home):
  model = torch_resnet("resnet18", num_classes=1000)
  checkpoints = torch_home / "hub" / "checkpoints"
  checkpoints.mkdir(parents=True)
  torch.save(model.state_dict(), checkpoints / "resnet18-f37072fd.pth")  # IMAGENET1K_V1's name
  assert convert.torchvision_weights_file("torchvision:resnet18") == (
      "resnet18",
      str(checkpoints / "resnet18-f37072fd.pth"),
  )
  module, variables = convert.resolve_torchvision("torchvision:resnet18:IMAGENET1K_V1")
  assert module.num_classes == 1000
  np.testing.assert_array_equal(
      variables["params"]["Dense_0"]["bias"], model.fc.bias.detach().numpy()
  )
  with pytest.raises(convert.ConvertError, match="holds resnet18 weights, not resnet50"):
    convert.load_torchvision("torchvision:resnet18", "resnet50")


@pytest.mark.parametrize(
    "source,match",
    [
        ("torchvision:resnet50:IMAGENET9K", "no resnet50 weights 'IMAGENET9K'.*IMAGENET1K_V2"),
        ("torchvision:resnet50:a:b", "use 'torchvision:<arch>\\[:<weights>\\]'"),
        ("torchvision:vgg16", "unknown torchvision architecture 'vgg16'"),
    ],
)
def test_bad_sources_are_errors(source, match, torch_home):
  with pytest.raises(convert.ConvertError, match=match):
    convert.resolve_torchvision(source)
