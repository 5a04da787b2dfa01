"""Differentially private training: DP-SGD (Abadi et al. 2016) and its privacy accounting.

With `config.dp.enabled`, each step of the engine (steps.train_step) computes every example's
gradient, scales it to an L2 norm of at most `dp.l2_clip`, sums them over the global batch,
adds Gaussian noise of standard deviation `dp.noise_multiplier * dp.l2_clip` once, and divides
by the global batch size; the optimizer then reads that gradient as usual.
Under pmap the clipped sums are summed across devices first and every device draws the same
noise from the same key, so the update is the one-device update; under mesh the sum is over the
sharded batch, with the same noise.

How the per-example gradients are had (`dp.per_example`): 'vmap' is jax.vmap of jax.grad, for
any model; 'ghost' is ghost clipping (ghost_clipping.py: the norms and the clipped sum from each
Dense/Conv layer's inputs and output gradients of one ordinary backward pass), for models made
of Dense and 2-D Conv layers only; 'auto' (the default) takes 'ghost' where it covers the model,
else 'vmap'. Both give the same clipped sum (tests/test_privacy.py); dropout masks differ (one
key per example under vmap, one per batch under ghost).

Accounting: `Accountant` uses dp-accounting's Renyi-DP accountant for a Poisson-sampled Gaussian
mechanism, sampling rate q = batch_size / N (N train examples), composed once per step, and
converts to (epsilon, delta). What it assumes about sampling, stated plainly: the analysis is that
of Poisson sampling (each example in each batch independently with probability q), while the
engine's input pipeline draws fixed-size batches from a per-epoch shuffle. Reporting the
Poisson-sampling epsilon for shuffled batches is the common practice (TF Privacy, Opacus and
most papers do it), but it is not a proven bound for shuffling, which can be less private
(Chua et al. 2024, "How private are DP-SGD implementations?").

What each example contributes must depend on that example alone, so the engine refuses models
that keep statistics across the batch (BatchNorm's 'batch_stats') and gradient accumulation (its
micro-batches would each need the clipping, which is not implemented). Label smoothing is
private: it changes each example's own target only. Each example's loss is its own weighted mean
(over its tokens, for sequence tasks), so DP-SGD with no noise and an unbounded clip equals the
plain step whenever every example has the same weight (always, for classification).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jaxmodels.train.config import ConfigError


@dataclasses.dataclass(frozen=True)
class DPSGD:
  """What the train step needs: the per-example clip norm and the noise multiplier."""

  l2_clip: float
  noise_multiplier: float
  per_example: str = "auto"  # config.dp.per_example: 'auto', 'ghost' or 'vmap'


def clip_per_example(per_example_grads: Any, l2_clip: float) -> tuple[Any, jax.Array]:
  """(each example's gradient scaled to an L2 norm of at most `l2_clip`, the norms before
  clipping [B]). Every leaf of `per_example_grads` has a leading example axis."""
  leaves = jax.tree_util.tree_leaves(per_example_grads)
  squares = [jnp.sum(jnp.square(x.reshape(x.shape[0], -1).astype(jnp.float32)), 1) for x in leaves]
  norms = jnp.sqrt(sum(squares))
  scale = clip_factors(norms, l2_clip)
  clipped = jax.tree_util.tree_map(
      lambda g: g * scale.reshape((-1,) + (1,) * (g.ndim - 1)).astype(g.dtype), per_example_grads
  )
  return clipped, norms


def clip_factors(norms: jax.Array, l2_clip: float) -> jax.Array:
  """min(1, C / norm) per example; the small constant keeps a zero gradient at zero, not NaN."""
  return jnp.minimum(1.0, l2_clip / jnp.maximum(norms, 1e-12))


def example_means(losses: jax.Array, weights: jax.Array) -> jax.Array:
  """Each example's own weighted mean loss [B] (over its tokens, for sequence tasks): what an
  example contributes must not depend on the other examples' weights."""
  axes = tuple(range(1, losses.ndim))
  return jnp.sum(losses, axes) / jnp.maximum(jnp.sum(weights, axes), 1e-9)


def add_noise(tree: Any, key: jax.Array, stddev: float) -> Any:
  """`tree` plus independent N(0, stddev^2) noise on every element (one key per leaf)."""
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  keys = jax.random.split(key, len(leaves))
  noised = [x + stddev * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
  return jax.tree_util.tree_unflatten(treedef, noised)


@dataclasses.dataclass(frozen=True)
class Accountant:
  """(epsilon, delta) spent after a number of DP-SGD steps: RDP of the Poisson-sampled Gaussian
  mechanism (dp-accounting), add-or-remove-one neighbouring datasets."""

  noise_multiplier: float
  sampling_probability: float
  delta: float

  def event(self, steps: int) -> Any:
    from dp_accounting import dp_event

    one = dp_event.PoissonSampledDpEvent(
        self.sampling_probability, dp_event.GaussianDpEvent(self.noise_multiplier)
    )
    return dp_event.SelfComposedDpEvent(one, steps)

  def epsilon(self, steps: int) -> float:
    """Epsilon after `steps` steps (0 for none): a function of the step alone, so a resumed run
    continues the accounting of the steps before it."""
    if steps <= 0:
      return 0.0
    from dp_accounting.rdp import rdp_privacy_accountant as rdp

    orders, per_step = self._rdp_per_step()
    return float(rdp.compute_epsilon(orders, per_step * steps, self.delta)[0])

  def _rdp_per_step(self) -> tuple[Any, Any]:
    """The RDP curve of one step. Composition adds RDP, so the curve of n steps is n times this
    one; computing it once keeps the epsilon logged at every log step cheap (one curve takes
    about 0.2 s). tests/test_privacy.py checks the result against dp-accounting's own
    composition of n steps."""
    return _one_step_rdp(self.noise_multiplier, self.sampling_probability)


@functools.lru_cache(maxsize=16)
def _one_step_rdp(noise_multiplier: float, sampling_probability: float) -> tuple[Any, Any]:
  from dp_accounting.rdp import rdp_privacy_accountant as rdp

  accountant = rdp.RdpAccountant()
  accountant.compose(Accountant(noise_multiplier, sampling_probability, 0.0).event(1))
  # RdpAccountant keeps the composed curve in `_rdp` over `_orders` (dp-accounting 0.6).
  return accountant._orders, accountant._rdp  # pylint: disable=protected-access


def calibrate_noise(epsilon: float, delta: float, sampling_probability: float, steps: int) -> float:
  """The smallest noise multiplier whose `steps` steps spend at most `epsilon` at `delta`."""
  from dp_accounting import mechanism_calibration
  from dp_accounting.rdp import rdp_privacy_accountant as rdp

  return float(
      mechanism_calibration.calibrate_dp_mechanism(
          rdp.RdpAccountant,
          lambda sigma: Accountant(sigma, sampling_probability, delta).event(steps),
          epsilon,
          delta,
          mechanism_calibration.LowerEndpointAndGuess(0.1, 1.0),
          tol=1e-4,
      )
  )


def default_delta(num_examples: int) -> float:
  """1/N rounded down to a power of ten (N = 60000: 1e-05)."""
  return 10.0 ** math.floor(math.log10(1.0 / num_examples))


@dataclasses.dataclass(frozen=True)
class Plan:
  """A DP run's step settings and accountant, fixed before training."""

  sgd: DPSGD
  accountant: Accountant
  calibrated: bool  # the noise multiplier was calibrated from config.dp.epsilon

  def describe(self, steps: int) -> str:
    a = self.accountant
    how = "calibrated to the target epsilon" if self.calibrated else "given"
    return (
        f"DP-SGD: l2_clip {self.sgd.l2_clip:g}, noise multiplier {a.noise_multiplier:.4g} ({how}); "
        f"{steps} steps at sampling rate q={a.sampling_probability:.4g} spend epsilon "
        f"{a.epsilon(steps):.3g} at delta {a.delta:g} (RDP accountant, assuming Poisson sampling; "
        "the batches are fixed-size draws from a shuffle)."
    )

  def summary(self, steps: int) -> dict[str, float]:
    return {
        "dp_epsilon": self.accountant.epsilon(steps),
        "dp_delta": self.accountant.delta,
        "dp_noise_multiplier": self.accountant.noise_multiplier,
        "dp_l2_clip": self.sgd.l2_clip,
        "dp_sampling_probability": self.accountant.sampling_probability,
    }


def plan(config: ml_collections.ConfigDict, num_examples: int) -> Plan | None:
  """The DP settings of `config` for a train split of `num_examples`; None when dp is off.
  A target config.dp.epsilon is turned into a noise multiplier here, before training."""
  dp = config.dp
  if not dp.enabled:
    return None
  q = config.batch_size / num_examples
  if q > 1:
    raise ConfigError(
        f"config.batch_size={config.batch_size} is larger than the {num_examples} train examples: "
        "DP-SGD's sampling rate batch_size / N must be at most 1; use a smaller batch_size."
    )
  delta = dp.delta if dp.delta is not None else default_delta(num_examples)
  sigma = dp.noise_multiplier
  if sigma is None:
    sigma = calibrate_noise(dp.epsilon, delta, q, config.num_train_steps)
  sgd = DPSGD(dp.l2_clip, sigma, dp.get("per_example", "auto"))
  return Plan(sgd, Accountant(sigma, q, delta), dp.noise_multiplier is None)


def check_model(model: nn.Module, task: Any, batch: Any) -> None:
  """Refuses a model that keeps state across the examples of a batch (BatchNorm's
  'batch_stats'): one example's gradient would depend on the others, and clipping each example
  would no longer bound what it contributes."""
  rngs = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(0)}
  shapes = jax.eval_shape(lambda: model.init(rngs, *task.model_args(batch), train=False))
  kept = sorted(k for k in shapes if k not in ("params", "cache"))
  if kept:
    raise ConfigError(
        f"config.dp.enabled=True, but the model {type(model).__name__} keeps the collection(s) "
        f"{', '.join(kept)} (BatchNorm statistics mix the examples of a batch), so clipping "
        "each example's gradient does not bound its influence and the run would not be private. "
        "Use a model without BatchNorm (for the CNN: --config.model.use_batchnorm=False; "
        "GroupNorm or LayerNorm are per-example) or turn DP off."
    )
