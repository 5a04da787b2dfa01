"""oneDNN kernels as XLA FFI targets on CPU: the library `build.py` compiles, loaded on first use.

Importing this package loads nothing; `load()` opens the library with ctypes and registers its
handlers with jax once per process, `unavailable_reason()` says why it cannot (not built, stale,
failed to load) or returns None.
"""

import ctypes
import functools
import logging
import pathlib
import platform
import sys

HERE = pathlib.Path(__file__).resolve().parent
SOURCES = sorted(HERE.glob("*.cc"))
HEADERS = sorted(HERE.glob("*.h"))
LIBRARY = HERE / "_build" / "libjaxmodels_onednn.so"  # build.py writes it; git ignores _build/

# FFI target name -> symbol the library exports (XLA_FFI_DEFINE_HANDLER_SYMBOL in the .cc files).
TARGETS = {
    "jaxmodels_onednn_conv_forward": "JaxmodelsOnednnConvForward",
    "jaxmodels_onednn_conv_backward_data": "JaxmodelsOnednnConvBackwardData",
    "jaxmodels_onednn_conv_backward_weights": "JaxmodelsOnednnConvBackwardWeights",
    "jaxmodels_onednn_lstm_forward": "JaxmodelsOnednnLstmForward",
    "jaxmodels_onednn_lstm_inference": "JaxmodelsOnednnLstmInference",
    "jaxmodels_onednn_lstm_backward": "JaxmodelsOnednnLstmBackward",
}
# Plain C functions the library exports, called through ctypes at trace time.
FUNCTIONS = ("JaxmodelsOnednnLstmWorkspaceBytes",)


class KernelUnavailableError(RuntimeError):
  """impl='onednn' was asked for where the oneDNN kernels cannot run; the message says why."""


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str | None]:
  if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
    return None, f"oneDNN kernels run on x86-64 Linux only, not {sys.platform} {platform.machine()}"
  if not LIBRARY.exists():
    return (
        None,
        f"{LIBRARY} not built: run `make kernels` (python -m jaxmodels.kernels.onednn.build)",
    )
  built = LIBRARY.stat().st_mtime
  stale = [s.name for s in SOURCES + HEADERS if s.stat().st_mtime > built]
  if stale:
    return None, f"{LIBRARY} is older than {', '.join(stale)}: run `make kernels`"
  try:
    # RTLD_LOCAL (ctypes' default): our libdnnl never meets the oneDNN that torch links in.
    library = ctypes.CDLL(str(LIBRARY))
  except OSError as e:
    return None, f"cannot load {LIBRARY}: {e}"
  import jax  # noqa: PLC0415  (registration needs jax; importing this package does not)

  missing = [s for s in (*TARGETS.values(), *FUNCTIONS) if not hasattr(library, s)]
  if missing:
    return None, f"{LIBRARY} lacks {', '.join(missing)}: run `make kernels`"
  for name, symbol in TARGETS.items():
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
  return library, None


def unavailable_reason() -> str | None:
  """Why the kernels cannot be used in this process, or None when they are loaded."""
  return _load()[1]


@functools.cache
def call_threads() -> int:
  """The OpenMP team size of every kernel call in this process: the usable cores shared equally
  among the host CPU devices (each may run a call at once under pmap). Fixed per process, so the
  results never depend on which calls happen to overlap."""
  import jax  # noqa: PLC0415

  from jaxmodels import _env  # noqa: PLC0415

  return max(1, _env.usable_cpus() // len(jax.local_devices(backend="cpu")))


def load() -> ctypes.CDLL:
  """Loads and registers the kernels (once) and returns the library; KernelUnavailableError
  says why it cannot."""
  library, reason = _load()
  if reason:
    raise KernelUnavailableError(f"impl='onednn' needs the oneDNN kernels: {reason}")
  return library


@functools.cache
def warn_unavailable(fallback: str) -> None:
  """Logs, once per process and fallback, why impl='auto' uses `fallback` instead."""
  logging.warning("oneDNN kernels unavailable, using %s: %s", fallback, unavailable_reason())


def choose(
    impl: str,
    impls: tuple[str, str, str],
    reason_unsupported: str | None,
    error: type[ValueError],
    what: str,
    fallback: str,
) -> bool:
  """True to run one call (`what`: "this convolution", "this layer") with oneDNN under `impl`,
  one of `impls` = (the native path, 'onednn', 'auto'). 'onednn' raises `error` (or
  KernelUnavailableError) with the reason it cannot run; 'auto' falls back to `fallback` and logs
  why the kernels are unavailable, once."""
  if impl not in impls:
    raise error(f"unknown impl {impl!r}: use one of {', '.join(impls)}")
  if impl == impls[0]:
    return False
  if impl == "onednn":
    load()
    if reason_unsupported:
      raise error(f"impl='onednn' cannot run {what}: {reason_unsupported}")
    return True
  if unavailable_reason():
    warn_unavailable(fallback)
    return False
  return reason_unsupported is None
