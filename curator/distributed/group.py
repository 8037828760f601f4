"""The process group of a torchrun job, and the few collectives curator's stages use.

torchrun (or ``curator index --nproc``) starts one process per rank and sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. ``join(device_type)`` opens
the group from them: gloo on the CPU; on CUDA, nccl for CUDA tensors with gloo beside it for the
small Python objects the stages exchange (settings, plans, errors). Without those variables, or
with ``WORLD_SIZE=1``, it gives a group of one that never touches torch.distributed, so every
stage runs the same code on one process.

Agreeing on failures: a step that only rank 0 runs (taking the store's lock, folding a killed
run's commits) is wrapped in ``Group.on_rank0``: its result, or its error, reaches every rank.
The other ranks raise ``PeerError``, which the CLI turns into the same exit code without
printing the line again, so a refused job says why once.
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator, TypeVar

from curator.errors import CuratorError, CuratorRuntimeError, MismatchError

T = TypeVar("T")
TIMEOUT_ENV = "CURATOR_DIST_TIMEOUT"  # seconds a collective waits for the slowest rank (default 2 h)
DEFAULT_TIMEOUT_S = 7200


class PeerError(CuratorError):
    """Another rank failed, and said why itself: exit with its code, print nothing more."""

    quiet = True

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Stopped(CuratorError):
    """torchrun stopped this rank (SIGTERM) because another rank failed; that rank says why."""

    quiet = True
    exit_code = 143


def _stop(signum: int, frame: Any) -> None:
    raise Stopped(f"rank {os.environ.get('RANK', '?')} stopped by signal {signum}")


def launched() -> bool:
    """Whether this process is one rank of a torchrun job with more than one rank."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


@dataclass
class Group:
    """This process's place in the job: ``rank`` of ``world``, ``local_rank`` on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def on_rank0(self, fn: Callable[[], T]) -> T | None:
        """Run ``fn`` on rank 0 only; its CuratorError is raised on every rank (a PeerError elsewhere).

        Returns ``fn()``'s result on rank 0 and None on the others.
        """
        result: T | None = None
        failure: tuple[str, int] | None = None
        if self.is_main:
            try:
                result = fn()
            except CuratorError as exc:
                failure = (str(exc), exc.exit_code)
                if not self.active:
                    raise
                self.broadcast(failure)
                raise
        failure = self.broadcast(failure)
        if failure is not None:
            raise PeerError(*failure)
        return result

    def agree(self, what: str, settings: dict[str, Any]) -> None:
        """Refuse to go on unless every rank was given the same ``settings`` (before any write).

        Raised on every rank: rank 0 says which rank differs and in which setting; the others
        raise it quietly.
        """
        everyone = [_flatten(x) for x in self.gather(settings)]
        settings = everyone[self.rank]
        for r, theirs in enumerate(everyone):
            for key in sorted(set(settings) | set(theirs)):
                if theirs.get(key) != everyone[0].get(key):
                    msg = (f"rank {r} was started with different {what} from rank 0: {key} is {_short(theirs.get(key))} there and "
                           f"{_short(everyone[0].get(key))} on rank 0: start every rank with the same command, data and environment")
                    if self.is_main:
                        raise MismatchError(msg)
                    raise PeerError(msg, MismatchError.exit_code)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys, so a difference is named down to the field."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 100 else text[:97] + "..."


def _timeout() -> timedelta:
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        return timedelta(seconds=float(raw)) if raw else timedelta(seconds=DEFAULT_TIMEOUT_S)
    except ValueError:
        raise CuratorRuntimeError(f"${TIMEOUT_ENV}={raw!r} is not a number of seconds: unset it or give e.g. 7200") from None


@contextmanager
def join(device_type: str = "cpu") -> Iterator[Group]:
    """The job's group for the duration of a stage (a group of one outside torchrun).

    Opens torch.distributed's default group from torchrun's environment when it is not open yet.
    It stays open for the next stage of the same script (a notebook or script under torchrun may
    index two stores in a row) and is closed when the process exits.
    """
    if not launched():
        yield Group()
        return
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if device_type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend=backend, timeout=_timeout())
        except Exception as exc:  # noqa: BLE001 (a rendezvous failure is the environment's, not a bug)
            raise CuratorRuntimeError(f"rank {rank} of {world}: could not join the torchrun job's process group ({type(exc).__name__}: {exc}): check MASTER_ADDR/MASTER_PORT or torchrun's --rdzv-endpoint") from None
        atexit.register(_close)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _stop) if main_thread else None  # leave quietly, progress bars closed
    try:
        yield Group(rank, world, local, dist.get_backend())
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _close() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
