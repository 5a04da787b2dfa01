"""Start one trial: tie its life to the sweep worker, pin its cores, then exec the experiment.

Run as a script by path (not `-m`), so it imports nothing of the project:
  python _launch.py PARENT_PID CORES -- python -m experiments.x --workdir=...
A trial that outlived a killed sweep would keep writing into a directory the rerun resumes in,
so on Linux the kernel kills it (PR_SET_PDEATHSIG) when the worker thread that started it ends.
Pinning before exec means every thread XLA later creates inherits the core set.
"""

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def main(argv: list) -> None:
  parent, cores, sep, *cmd = argv
  assert sep == "--" and cmd, "usage: _launch.py PARENT_PID CORES -- COMMAND..."
  try:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
  except (OSError, AttributeError):  # not Linux: no parent-death signal
    pass
  if os.getppid() != int(parent):  # the sweep died before prctl took effect
    sys.exit(1)
  if cores and hasattr(os, "sched_setaffinity"):
    try:
      os.sched_setaffinity(0, {int(c) for c in cores.split(",")})
    except OSError:
      pass
  os.execv(cmd[0], cmd)


if __name__ == "__main__":
  main(sys.argv[1:])
