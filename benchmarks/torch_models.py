"""The benchmarked models written in PyTorch, with the same shapes, FLOPs and optimizer (Adam).

Each model mirrors its flax counterpart layer for layer: the GPT is pre-LayerNorm with a fused QKV
projection, tanh-GELU and an untied head; the ResNet-18 has the small-image stem (3x3/1 conv, no
max-pool) and 1x1 projection shortcuts; the LSTM language model is Embedding -> nn.LSTM -> Linear;
the MLP is Flatten -> Dense/ReLU layers. The GPT uses `F.scaled_dot_product_attention` with
`is_causal=True`, the idiomatic (and fastest) way to write attention in PyTorch eager.

A `TorchStep` runs one optimizer step on a fixed batch, the way a PyTorch training loop does,
with as many intra-op threads as cores. Variants: 'eager' (NCHW for images), 'channels_last'
(images only), 'eager_1thread' (one thread: on a loaded machine OpenMP's barriers make small
ops far slower with two threads than with one, so for the small models the faster of the two is
the fair baseline) and 'compile' (torch.compile of the model; it needs a C++ compiler and may be
unavailable).
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F


class GPTBlock(nn.Module):
  """x + out(attention(LN(x))), then x + fc2(gelu(fc1(LN(x))))."""

  def __init__(self, dim: int, heads: int, mlp_dim: int, sdpa: bool = True):
    super().__init__()
    self.heads, self.sdpa = heads, sdpa
    self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
    self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
    self.fc1, self.fc2 = nn.Linear(dim, mlp_dim), nn.Linear(mlp_dim, dim)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    b, t, c = x.shape
    qkv = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, c // self.heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    if self.sdpa:
      a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
      a = _attend(q, k, v)
    x = x + self.out(a.transpose(1, 2).reshape(b, t, c))
    return x + self.fc2(F.gelu(self.fc1(self.ln2(x)), approximate="tanh"))


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
  """Causal softmax(q k^T / sqrt(d)) v with explicit matmuls (what the flax model computes)."""
  t = q.shape[-2]
  scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
  causal = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
  return scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v


class GPT(nn.Module):
  """Token + learned position embeddings, pre-LN causal blocks, final LN, untied head.

  `sdpa=False` computes attention with explicit matmuls instead of the fused kernel.
  """

  def __init__(
      self,
      vocab_size: int,
      model_dim: int,
      num_layers: int,
      num_heads: int,
      mlp_dim: int,
      context: int,
      sdpa: bool = True,
      **_,
  ):
    super().__init__()
    self.embed = nn.Embedding(vocab_size, model_dim)
    self.pos = nn.Parameter(torch.randn(context, model_dim) * 0.02)
    self.blocks = nn.ModuleList(
        GPTBlock(model_dim, num_heads, mlp_dim, sdpa) for _ in range(num_layers)
    )
    self.ln = nn.LayerNorm(model_dim)
    self.head = nn.Linear(model_dim, vocab_size, bias=False)

  def forward(self, ids: torch.Tensor) -> torch.Tensor:
    x = self.embed(ids) + self.pos[: ids.shape[1]]
    for block in self.blocks:
      x = block(x)
    return self.head(self.ln(x))


class BasicBlock(nn.Module):
  """Two 3x3 conv + BN; a strided 1x1 conv + BN shortcut when the shape changes."""

  def __init__(self, cin: int, cout: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    self.proj = None
    if stride != 1 or cin != cout:
      self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    shortcut = x if self.proj is None else self.proj(x)
    y = F.relu(self.bn1(self.conv1(x)))
    return F.relu(self.bn2(self.conv2(y)) + shortcut)


class ResNet18(nn.Module):
  """ResNet-18 with the small-image stem: 3x3/1 conv + BN + ReLU, four stages of 2 blocks."""

  def __init__(self, image_shape: tuple[int, int, int], num_classes: int, num_filters: int, **_):
    super().__init__()
    cin, width = image_shape[-1], num_filters
    layers: list[nn.Module] = [
        nn.Conv2d(cin, width, 3, 1, 1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
    ]
    for stage in range(4):
      cout = num_filters * 2**stage
      for j in range(2):
        layers.append(BasicBlock(width, cout, 2 if stage > 0 and j == 0 else 1))
        width = cout
    self.features = nn.Sequential(*layers)
    self.head = nn.Linear(width, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.head(self.features(x).mean(dim=(2, 3)))


class LSTMLanguageModel(nn.Module):
  """Embedding -> one nn.LSTM layer -> Linear over the vocabulary at every step."""

  def __init__(self, vocab_size: int, embed_dim: int, hidden_size: int, **_):
    super().__init__()
    self.embed = nn.Embedding(vocab_size, embed_dim)
    self.lstm = nn.LSTM(embed_dim, hidden_size, batch_first=True)
    self.head = nn.Linear(hidden_size, vocab_size)

  def forward(self, ids: torch.Tensor) -> torch.Tensor:
    out, _ = self.lstm(self.embed(ids))
    return self.head(out)


class MLP(nn.Module):
  """Flatten -> (Linear -> ReLU) per hidden size -> Linear to logits."""

  def __init__(
      self, image_shape: tuple[int, ...], hidden_sizes: tuple[int, ...], num_classes: int, **_
  ):
    super().__init__()
    sizes = [math.prod(image_shape), *hidden_sizes]
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in zip(sizes[:-1], sizes[1:]):
      layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(sizes[-1], num_classes))
    self.net = nn.Sequential(*layers)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.net(x)


MODELS = {"gpt": GPT, "resnet18": ResNet18, "lstm": LSTMLanguageModel, "mlp": MLP}


def variants(name: str) -> tuple[str, ...]:
  """The eager variants worth timing for `name` (the fastest one is the baseline)."""
  if name == "resnet18":
    return ("eager", "channels_last")
  if name in ("mlp", "lstm"):
    return ("eager", "eager_1thread")
  return ("eager",)


def set_threads(threads: int | None = None) -> int:
  """Intra-op threads = cores (or `threads`); returns the number set."""
  threads = threads or os.cpu_count() or 1
  torch.set_num_threads(threads)
  return threads


def _adam(params, lr: float) -> torch.optim.Optimizer:
  """Adam with PyTorch's fastest CPU implementation that works here (fused, else foreach)."""
  params = list(params)
  for kw in ({"fused": True}, {"foreach": True}, {}):
    try:
      opt = torch.optim.Adam(params, lr=lr, **kw)
      return opt
    except (RuntimeError, ValueError, TypeError):
      continue
  raise RuntimeError("no usable torch.optim.Adam")


class TorchStep:
  """One Adam step of model `name` on a fixed batch (from benchmarks.shapes.make_batch)."""

  def __init__(
      self,
      name: str,
      shape: dict[str, Any],
      batch: dict[str, np.ndarray],
      variant: str = "eager",
      lr: float = 1e-3,
      seed: int = 0,
  ):
    if variant not in ("eager", "channels_last", "eager_1thread", "compile"):
      raise ValueError(f"unknown torch variant {variant!r}")
    torch.manual_seed(seed)
    self.name, self.variant = name, variant
    self.threads = 1 if variant == "eager_1thread" else (os.cpu_count() or 1)
    model = MODELS[name](**shape)
    x = torch.from_numpy(np.ascontiguousarray(batch["inputs"]))
    if x.ndim == 4:
      x = x.permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
      if variant == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    self.x = x if x.is_floating_point() else x.long()
    self.y = torch.from_numpy(np.ascontiguousarray(batch["targets"])).long()
    self.model = model.train()
    self.forward = torch.compile(model) if variant == "compile" else model
    self.opt = _adam(model.parameters(), lr)

  def step(self) -> torch.Tensor:
    self.opt.zero_grad(set_to_none=True)
    logits = self.forward(self.x)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), self.y.reshape(-1))
    loss.backward()
    self.opt.step()
    return loss.detach()

  def run(self, steps: int) -> float:
    """Seconds for `steps` steps (PyTorch on CPU is synchronous)."""
    torch.set_num_threads(self.threads)
    start = time.perf_counter()
    for _ in range(steps):
      self.step()
    return time.perf_counter() - start

  def num_params(self) -> int:
    return sum(p.numel() for p in self.model.parameters())


# ---------- gpt_small: a whole training run, as a plain PyTorch script would do it


def _lr_at(step: int, lr: float, warmup: int, steps: int) -> float:
  """optax.warmup_cosine_decay_schedule(0, lr, warmup, steps): linear from 0, cosine to 0."""
  if step < warmup:
    return lr * step / warmup
  progress = min(1.0, (step - warmup) / max(steps - warmup, 1))
  return 0.5 * lr * (1 + math.cos(math.pi * progress))


def _eval_loss(model: nn.Module, inputs: np.ndarray, targets: np.ndarray, batch: int) -> float:
  """Mean next-character cross entropy over every target of the windows."""
  model.eval()
  total, count = 0.0, 0
  with torch.no_grad():
    for i in range(0, len(inputs), batch):
      x = torch.from_numpy(inputs[i : i + batch]).long()
      y = torch.from_numpy(targets[i : i + batch]).long()
      logits = model(x)
      total += float(F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum"))
      count += y.numel()
  model.train()
  return total / count


def _sample(model: nn.Module, prompt: np.ndarray, num_tokens: int, context: int, seed: int):
  """Samples `num_tokens` characters at temperature 0.8, sliding the window past `context`."""
  gen = torch.Generator().manual_seed(seed)
  ids = torch.from_numpy(prompt).long()[None]
  model.eval()
  with torch.no_grad():
    for _ in range(num_tokens):
      logits = model(ids[:, -context:])[:, -1] / 0.8
      ids = torch.cat([ids, torch.multinomial(logits.softmax(-1), 1, generator=gen)], 1)
  model.train()
  return ids[0].numpy()


def _gpt(args: dict[str, Any]) -> GPT:
  torch.manual_seed(args["seed"])
  return GPT(
      vocab_size=args["vocab_size"],
      model_dim=args["model_dim"],
      num_layers=args["num_layers"],
      num_heads=args["num_heads"],
      mlp_dim=args["mlp_dim"],
      context=args["context"],
  )


def faster_threads(args: dict[str, Any], steps: int = 5) -> tuple[int, float]:
  """(the faster intra-op thread count of 1 and all cores for this model's train step, the
  seconds the probe took): on a loaded machine OpenMP's barriers made the small GPT's eval
  batches 4x slower with two threads than with one, so the baseline gets the better of both."""
  start = time.perf_counter()
  model = _gpt(args)
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
  x = torch.randint(args["vocab_size"], (args["batch_size"], args["context"] + 1))
  best = None
  for threads in sorted({1, os.cpu_count() or 1}):
    torch.set_num_threads(threads)
    took = 0.0
    for i in range(steps + 1):  # the first is a warm-up
      t = time.perf_counter()
      loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
      took += (time.perf_counter() - t) if i else 0.0
    best = (took, threads) if best is None or took < best[0] else best
  torch.set_num_threads(best[1])
  return best[1], time.perf_counter() - start


def train_gpt_small(data: dict[str, np.ndarray], args: dict[str, Any]) -> dict[str, Any]:
  """Trains the GPT on `data` (train text, validation/test windows, the eval sample) as a
  nanoGPT-style script does: random windows, AdamW with decay on matrices, warm-up + cosine,
  clipping, evaluations every eval_every steps on the sampled windows, full splits at the end,
  a 200-character sample. Threads: the faster of 1 and all cores (faster_threads; its probe's
  seconds are reported as probe_s, for the caller to leave out of the wall time). Returns the
  losses and the step time (mean over steps 2..n, evaluations excluded)."""
  threads, probe_s = faster_threads(args)
  context, batch, steps = args["context"], args["batch_size"], args["steps"]
  eval_batch = args["eval_batch_size"]
  model = _gpt(args)
  decay = [p for p in model.parameters() if p.dim() >= 2]
  rest = [p for p in model.parameters() if p.dim() < 2]
  groups = [{"params": decay, "weight_decay": args["weight_decay"]}, {"params": rest}]
  opt = torch.optim.AdamW(groups, lr=args["lr"], betas=(0.9, args["b2"]), weight_decay=0.0)
  text = torch.from_numpy(data["train"]).long()
  gen = torch.Generator().manual_seed(args["seed"])
  sample = data["eval_sample"]
  evals, step_time, first_step_done = [], 0.0, None
  for step in range(steps):
    t = time.perf_counter()
    starts = torch.randint(len(text) - context - 1, (batch,), generator=gen)
    chunk = text[starts[:, None] + torch.arange(context + 1)[None]]
    for group in opt.param_groups:
      group["lr"] = _lr_at(step, args["lr"], args["warmup"], steps)
    logits = model(chunk[:, :-1])
    loss = F.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), args["clip"])
    opt.step()
    if step == 0:
      first_step_done = time.time()
    else:
      step_time += time.perf_counter() - t
    if (step + 1) % args["eval_every"] == 0 and step + 1 < steps:
      v = _eval_loss(model, data["val_inputs"][sample], data["val_targets"][sample], eval_batch)
      evals.append((step + 1, v))
  val = _eval_loss(model, data["val_inputs"], data["val_targets"], eval_batch)
  test = _eval_loss(model, data["test_inputs"], data["test_targets"], eval_batch)
  _sample(model, data["prompt"], args["sample_tokens"], context, args["seed"])
  return {
      "eval_loss": val,
      "test_loss": test,
      "intermediate_eval_loss": evals,
      "step_s": step_time / max(steps - 1, 1),
      "first_step_done": first_step_done,
      "threads": threads,
      "probe_s": probe_s,
  }


def _main() -> None:
  """python -m benchmarks.torch_models --gpt_small=DATA.npz --args=JSON: one run, JSON out."""
  import argparse
  import json

  parser = argparse.ArgumentParser(description=_main.__doc__)
  parser.add_argument("--gpt_small", required=True, help="the .npz benchmarks.run wrote")
  parser.add_argument("--args", required=True, help="hyper-parameters as a JSON object")
  ns = parser.parse_args()
  with np.load(ns.gpt_small) as f:
    data = dict(f)
  print(json.dumps(train_gpt_small(data, json.loads(ns.args))), flush=True)


if __name__ == "__main__":
  _main()
