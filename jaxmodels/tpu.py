"""TPU generations and topology names: the one table of chip numbers the AOT check uses.

A topology is named either as Cloud TPU accelerator types are (`v5e-16`, `v5litepod-16`, `v4-32`,
`v5p-128`, `v6e-256`) or by its chip grid (`v5e:4x4`, `v4:2x2x4`, `v5p:4x4x4`). In accelerator
types v4 and v5p count TensorCores (two per chip), v5e and v6e count chips
(https://cloud.google.com/tpu/docs/v5p-training: "v5p-32 specifies a v5p TPU slice with 32
TensorCores (16 chips)"; https://cloud.google.com/tpu/docs/v5e: "v5litepod-16" has 16 chips).
JAX sees one device per chip on every generation here: v4 and v5p run their two TensorCores as
one "megacore" device.
"""

from __future__ import annotations

import dataclasses
import math
import re

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  """One chip of a TPU generation; the numbers are per chip, bf16 dense matmul peak."""

  generation: str
  peak_flops: float  # FLOP/s, bf16
  hbm_bytes: int
  hbm_bandwidth: float  # bytes/s
  cores_per_chip: int
  grid_dims: int  # 2: 2D torus (v5e, v6e); 3: 3D torus (v4, v5p)
  type_prefix: str  # gcloud --accelerator-type prefix
  libtpu_name: str  # the generation in libtpu's topology names
  min_chips: int

  @property
  def counts_cores(self) -> bool:
    """Whether accelerator types name TensorCores (v4, v5p) rather than chips."""
    return self.cores_per_chip > 1


CHIPS: dict[str, Chip] = {
    # https://cloud.google.com/tpu/docs/v4: 275 TFLOP/s bf16, 32 GiB HBM2, 1200 GB/s, 2 TensorCores.
    "v4": Chip("v4", 275e12, 32 * GiB, 1200e9, 2, 3, "v4", "v4", 4),
    # https://cloud.google.com/tpu/docs/v5e: 197 TFLOP/s bf16, 16 GB HBM2, 819 GB/s, 1 TensorCore.
    "v5e": Chip("v5e", 197e12, 16 * GiB, 819e9, 1, 2, "v5litepod", "v5e", 1),
    # https://cloud.google.com/tpu/docs/v5p: 459 TFLOP/s bf16, 95 GB HBM2e, 2765 GB/s, 2 cores.
    "v5p": Chip("v5p", 459e12, 95 * GiB, 2765e9, 2, 3, "v5p", "v5p", 4),
    # https://cloud.google.com/tpu/docs/v6e: 918 TFLOP/s bf16, 32 GB HBM, 1638 GB/s, 1 TensorCore.
    "v6e": Chip("v6e", 918e12, 32 * GiB, 1638e9, 1, 2, "v6e", "v6e", 1),
}

_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6": "v6e", "v5": "v5p"}

FORMS = (
    "accelerator types: v4-8, v4-32, v5e-16 (or v5litepod-16), v5p-128, v6e-256 (v4 and v5p "
    "count TensorCores, two per chip; v5e and v6e count chips), or chip grids: v4:2x2x4, "
    "v5e:4x4, v5p:4x4x4, v6e:16x16; generations: " + ", ".join(CHIPS)
)


class TopologyError(ValueError):
  """A topology name that cannot be used; the message lists the valid forms."""


@dataclasses.dataclass(frozen=True)
class Topology:
  chip: Chip
  grid: tuple[int, ...]  # chips along each torus dimension, one slice
  num_slices: int = 1

  @property
  def chips_per_slice(self) -> int:
    return math.prod(self.grid)

  @property
  def num_chips(self) -> int:
    return self.chips_per_slice * self.num_slices

  @property
  def name(self) -> str:
    """libtpu's name of one slice, e.g. 'v5e:4x4'."""
    return f"{self.chip.libtpu_name}:{'x'.join(map(str, self.grid))}"

  @property
  def accelerator_type(self) -> str:
    """gcloud's --accelerator-type of one slice, e.g. 'v5litepod-16' or 'v5p-128'."""
    return f"{self.chip.type_prefix}-{self.chips_per_slice * self.chip.cores_per_chip}"

  def describe(self) -> str:
    slices = f" x {self.num_slices} slices" if self.num_slices > 1 else ""
    return f"{self.accelerator_type} ({self.name}, {self.chips_per_slice} chips){slices}"


def _generation(name: str, topology: str) -> Chip:
  key = _ALIASES.get(name.lower(), name.lower())
  if key not in CHIPS:
    raise TopologyError(f"--topology={topology}: unknown TPU generation {name!r}. Valid {FORMS}.")
  return CHIPS[key]


def default_grid(chip: Chip, num_chips: int) -> tuple[int, ...]:
  """The grid Cloud TPU gives a slice of `num_chips` chips (powers of two): 2D grids double
  their second dimension first (2x2, 2x4, 4x4, 4x8); 3D ones start from 2x2x1 and double the
  last of their smallest dimensions (2x2x2, 2x2x4, 2x4x4, 4x4x4, 4x4x8)."""
  grid = [1] * chip.grid_dims
  if chip.grid_dims == 3 and num_chips >= 4:
    grid = [2, 2, 1]
  while math.prod(grid) < num_chips:
    smallest = min(grid)
    last = max(i for i, g in enumerate(grid) if g == smallest)
    grid[last] *= 2
  return tuple(grid)


def parse(topology: str, num_slices: int = 1) -> Topology:
  """A Topology from an accelerator type (`v5p-128`) or a chip grid (`v5p:4x4x4`)."""
  if num_slices < 1:
    raise TopologyError(f"--num_slices={num_slices} must be a positive integer.")
  text = topology.strip()
  grid_form = re.fullmatch(r"([A-Za-z0-9]+):(\d+(?:x\d+)+)", text)
  type_form = re.fullmatch(r"([A-Za-z0-9]+)-(\d+)", text)
  if grid_form:
    chip = _generation(grid_form.group(1), topology)
    grid = tuple(int(g) for g in grid_form.group(2).split("x"))
    if len(grid) != chip.grid_dims or min(grid) < 1:
      raise TopologyError(
          f"--topology={topology}: {chip.generation} chip grids have {chip.grid_dims} "
          f"dimensions, e.g. {chip.libtpu_name}:{'x'.join(['2'] * chip.grid_dims)}. Valid {FORMS}."
      )
    return Topology(chip, grid, num_slices)
  if type_form:
    chip = _generation(type_form.group(1), topology)
    count = int(type_form.group(2))
    chips, rest = divmod(count, chip.cores_per_chip)
    unit = "TensorCores (two per chip)" if chip.counts_cores else "chips"
    if rest or chips < chip.min_chips or chips & (chips - 1):
      smallest = chip.min_chips * chip.cores_per_chip
      raise TopologyError(
          f"--topology={topology}: {chip.generation} accelerator types count {unit}; use a power "
          f"of two from {chip.type_prefix}-{smallest}, or name the chip grid (e.g. "
          f"{chip.libtpu_name}:{'x'.join(['4'] * chip.grid_dims)}). Valid {FORMS}."
      )
    return Topology(chip, default_grid(chip, chips), num_slices)
  raise TopologyError(f"--topology={topology!r} is not a topology name. Valid {FORMS}, or local.")


def chip_of_device_kind(device_kind: str) -> Chip | None:
  """The table's chip for a jax device_kind ('TPU v4', 'TPU v5 lite', 'TPU v5', 'TPU v6 lite')."""
  kinds = {"TPU v4": "v4", "TPU v5 lite": "v5e", "TPU v5e": "v5e", "TPU v5": "v5p"}
  kinds.update({"TPU v5p": "v5p", "TPU v6 lite": "v6e", "TPU v6e": "v6e"})
  key = kinds.get(device_kind)
  return CHIPS[key] if key else None
