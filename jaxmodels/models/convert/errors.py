"""The error every converter raises for input a user can fix."""


class ConvertError(ValueError):
  """A weights file or state dict that cannot be converted: which file or key, and why."""
