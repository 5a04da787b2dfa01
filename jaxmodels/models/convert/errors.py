"""The error every converter raises for input a user can fix."""


class ConvertError(ValueError):
  """Weights or a model configuration that cannot be converted: a missing or corrupt file, missing
  or unexpected tensor names, shape mismatches, or an architecture the other format cannot
  express. The message names what is wrong and what would be valid."""
