"""Builds the oneDNN kernels (the .cc files beside this module) into one shared library.

  python -m jaxmodels.kernels.onednn.build

`make setup` and `make test` run it. It needs a C++17 compiler, the XLA FFI headers that jaxlib
ships and oneDNN 3.x (the `onednn-cpu-gomp` and `onednn-devel-cpu-gomp` pip packages of the
install). When one is missing it prints why and exits 0: the models keep their XLA paths,
and `jaxmodels.kernels.onednn.unavailable_reason()` says the same thing at run time.
"""

import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile

from jaxmodels.kernels.onednn import LIBRARY, SOURCES

# Where the onednn pip packages put their files (the environment's prefix), then system paths.
_PREFIXES = (pathlib.Path(sys.prefix), pathlib.Path("/usr"), pathlib.Path("/usr/local"))
_LIB_DIRS = ("lib", "lib64", "lib/x86_64-linux-gnu")


class BuildError(RuntimeError):
  """Something the build needs is missing; the message names it."""


def _onednn() -> tuple[pathlib.Path, pathlib.Path]:
  """The include directory holding oneapi/dnnl/dnnl.hpp and the directory of libdnnl.so.3."""
  for prefix in _PREFIXES:
    include = prefix / "include"
    if not (include / "oneapi" / "dnnl" / "dnnl.hpp").is_file():
      continue
    for lib in _LIB_DIRS:
      if (prefix / lib / "libdnnl.so.3").exists():
        return include, prefix / lib
  raise BuildError(
      "oneDNN 3.x not found (no oneapi/dnnl/dnnl.hpp with libdnnl.so.3 under "
      + ", ".join(str(p) for p in _PREFIXES)
      + "): pip install onednn-cpu-gomp onednn-devel-cpu-gomp"
  )


def _compiler() -> str:
  for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
    if name and shutil.which(name):
      return name
  raise BuildError("no C++ compiler found ($CXX, g++, c++ or clang++)")


def command(output: pathlib.Path) -> list[str]:
  """The compiler command line that builds SOURCES into `output`."""
  if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
    raise BuildError(
        f"oneDNN kernels are built for x86-64 Linux only, not {sys.platform} "
        f"{platform.machine()}"
    )
  import jax  # noqa: PLC0415  (only the build needs jax's header directory)

  include, libdir = _onednn()
  return [
      _compiler(),
      "-O2",
      "-std=c++17",
      "-shared",
      "-fPIC",
      "-fopenmp",  # the onednn-cpu-gomp build threads with libgomp; common.h sizes its teams
      f"-I{jax.ffi.include_dir()}",
      f"-I{include}",
      *map(str, SOURCES),
      "-o",
      str(output),
      f"-L{libdir}",
      "-l:libdnnl.so.3",
      # An RPATH (not RUNPATH) also serves libdnnl's own dependencies (libtbb, libsycl), which
      # pip packages of other oneDNN builds install beside it without a path of their own.
      f"-Wl,--disable-new-dtags,-rpath,{libdir}",
  ]


def build() -> pathlib.Path:
  """Compiles LIBRARY (written whole or not at all) and returns its path."""
  cmd = command(LIBRARY)
  LIBRARY.parent.mkdir(exist_ok=True)
  with tempfile.TemporaryDirectory(dir=LIBRARY.parent) as tmp:
    staged = pathlib.Path(tmp) / LIBRARY.name
    cmd[cmd.index(str(LIBRARY))] = str(staged)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
      raise BuildError(f"{cmd[0]} failed:\n{done.stderr[-4000:]}")
    staged.replace(LIBRARY)
  return LIBRARY


def main() -> int:
  try:
    print(f"built {build()}")
  except BuildError as e:
    print(f"oneDNN kernels not built (optional; the models keep XLA): {e}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
