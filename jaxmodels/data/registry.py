"""The table of datasets: one DatasetSpec per module of jaxmodels/data/sets/, in NAMES order.

Adding a dataset is one module in sets/ (and its line here). Importing this needs neither
TensorFlow Datasets nor grain.
"""

from __future__ import annotations

from jaxmodels.data.errors import DataError
from jaxmodels.data.sets import cifar10, cmudict, digits, fashion_mnist, imdb, mnist, shakespeare
from jaxmodels.data.spec import DatasetSpec

SPECS: dict[str, DatasetSpec] = {
    s.name: s
    for s in (
        fashion_mnist.SPEC,
        mnist.SPEC,
        digits.SPEC,
        cifar10.SPEC,
        shakespeare.SPEC,
        imdb.SPEC,
        cmudict.SPEC,
    )
}
NAMES = tuple(SPECS)
# The datasets a package ships, so that they can be had without their own download site.
OFFLINE = tuple(name for name, s in SPECS.items() if s.offline)


def get(name: str) -> DatasetSpec:
  """The spec of dataset `name`; DataError naming the valid names if there is none."""
  if name not in SPECS:
    raise DataError(f"unknown dataset {name!r}; valid: {', '.join(NAMES)}")
  return SPECS[name]
