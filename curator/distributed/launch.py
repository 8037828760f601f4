"""``curator index --nproc N``: one node's torchrun job, started through torchrun's own launcher.

It is what ``torchrun --standalone --nproc-per-node N --no-python curator ...`` does, called from
Python: ``torch.distributed.launcher.api.elastic_launch`` with a c10d rendezvous on localhost and
no restarts, running the same command (less ``--nproc``) once per rank. Each rank gets
``OMP_NUM_THREADS`` = CPUs / N unless it is set, so N ranks use the threads one process would.

When a rank fails, the job fails with one line. A rank that raised an error has said why itself
(naming the rows it held); for a rank killed from outside (a signal, the OOM killer),
``describe(rank)`` tells what it held, and the line says so.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import uuid
from typing import Callable, Sequence

from curator.errors import CuratorRuntimeError, InputError

_QUIET_LOGGERS = ("torch.distributed.elastic", "torch.distributed.launcher")
LAUNCHED_ENV = "CURATOR_LAUNCHER"  # set for the ranks --nproc starts: the launcher reports a dead rank


def threads_per_rank(nproc: int) -> int:
    return max(1, (os.cpu_count() or 1) // nproc)


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def launch_local(nproc: int, args: Sequence[str], describe: Callable[[int], str | None] = lambda r: None) -> int:
    """Run ``curator ARGS`` as ``nproc`` ranks on this node; 0 when every rank succeeded.

    Raises CuratorRuntimeError naming the first rank that died from a signal and what it held;
    returns the exit code of a rank that failed on its own (it printed its own line).
    """
    if nproc < 1:
        raise InputError(f"--nproc {nproc} is invalid: use an integer >= 1")
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    os.environ.setdefault("OMP_NUM_THREADS", str(threads_per_rank(nproc)))
    os.environ[LAUNCHED_ENV] = "1"
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()), rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1, start_method="spawn")
    levels = {name: logging.getLogger(name).level for name in _QUIET_LOGGERS}
    for name in _QUIET_LOGGERS:  # the agent's own warnings; each rank reports its failure itself
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        elastic_launch(config, entrypoint=sys.executable)("-m", "curator.cli.main", *args)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        if failure.exitcode > 0:
            return int(failure.exitcode)
        held = describe(rank)
        what = f" holding {held}" if held else ""
        raise CuratorRuntimeError(f"rank {rank} of {nproc} died ({_signal_name(failure.exitcode)}, pid {failure.pid}){what}: rerun the same command, with any number of ranks, to resume from the committed rows") from None
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    return 0
