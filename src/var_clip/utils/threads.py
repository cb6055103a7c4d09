"""PyTorch's intra-op thread count: chosen by the size of the work, unless the user chose it; always restored.

A pipeline call on the CPU runs with the count that suits its work and the machine (:func:`threads_for_work`): one
thread for small models and batches while other processes keep cores busy (OpenMP threads meet at a barrier after
every operation, and a thread that waits for a busy core holds all the others up), every core when nothing else
runs (:func:`cores_used_by_others`), more threads as the work grows, up to torch's default (one per physical core)
for d16-sized work. A count the user set always wins, however it was set:

- ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` in the environment (torch reads them once, at start; ``accelerate
  launch`` and torchrun set ``OMP_NUM_THREADS`` for the processes they start, and that count is kept too);
- ``torch.set_num_threads(n)`` before or after importing var_clip, seen as a count other than torch's default;
- a command's ``--threads`` (or any block of code) under :func:`pinned_threads`, which also covers a count equal to
  torch's default.

Limits of the detection: ``torch.set_num_threads`` leaves no trace but the count itself, so a call that sets torch's
default count is not told apart from no call (use :func:`pinned_threads` for that). Torch's default is taken to be
the number of physical cores (``psutil``; torch asks cpuinfo); where the two disagree, or psutil cannot count cores,
the count found when this module was imported stands in for it, so a count set before the import is then taken as
the default. Every mistake falls on the side of leaving the count alone, as before this choice existed. The count is
process-wide (under OpenMP, each thread keeps the count it had when it first ran torch code): Python threads that
run pipelines at the same time may see each other's temporary choice, which changes their speed, never their result.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psutil  # accelerate's dependency, hence always installed with var-clip
import torch

__all__ = [
    "IDLE_BELOW_CORES",
    "WORK_PER_THREAD",
    "cores_used_by_others",
    "intra_op_threads",
    "pinned_threads",
    "thread_count_for",
    "threads_for_work",
    "user_chose_threads",
]

#: The work one more thread needs before it pays, in transformer parameters × tokens per image × rows (the images,
#: twice with classifier-free guidance; about half the call's multiply-adds). A call runs one thread per
#: ``WORK_PER_THREAD`` of work, at least one and at most torch's default. Every operation of the loop is split between
#: the threads, which meet at a barrier when it ends: small operations gain less from sharing than the meeting costs,
#: and a thread whose core is busy holds all the others up. Measured with ``benchmarks/bench_threads.py --sweep`` on
#: two cores shared with other work (load average 5-6): one thread ran the default model's 1, 4 and 16 images (work
#: 1.5e9, 6.2e9 and 2.5e10) 6.8×, 4.5× and 3.7× faster than two. d16's single image (310 M × 680 × 2 = 4.2e11) is the
#: work torch's default count was made for. 3e10 keeps every default-model batch up to 16 images on one thread and
#: gives d16 every core; where two threads start to pay on an idle machine is still to be measured (``--sweep``).
WORK_PER_THREAD = 3e10

#: Other processes that used fewer cores than this since the last look leave the machine idle: a call then takes
#: every core whatever its work. Measured with ``benchmarks/bench_threads.py`` on two idle cores: four images of the
#: default model took 0.45 s on two threads and 0.67 s on one; with one core kept busy, 1.41 s on two and 0.68 s on one.
IDLE_BELOW_CORES = 0.25
#: A shorter look than this says too little: the previous answer stands.
MIN_LOOK_SECONDS = 0.05

_ENVIRONMENT = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
_THREADS_AT_IMPORT = torch.get_num_threads()
_pinned: list[int] = []  # the counts pinned by the blocks running under `pinned_threads`, innermost last


def _torch_default_threads() -> int:
    """The count torch starts with when nothing is set: one per physical core (see the module's notes)."""
    try:
        physical = psutil.cpu_count(logical=False)
    except OSError:
        physical = None
    return physical or _THREADS_AT_IMPORT


def _cpu_clock() -> tuple[float, float, float] | None:
    """(wall seconds, CPU seconds the machine's cores were busy, CPU seconds of this process), or None where the
    system does not say."""
    try:
        machine = psutil.cpu_times()
        own = psutil.Process().cpu_times()
    except (OSError, psutil.Error):
        return None
    # guest time is already inside user time; steal is time the host gave to someone else
    busy = sum(getattr(machine, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq", "steal"))
    return time.monotonic(), busy, own.user + own.system


_last_look = _cpu_clock()  # the first call looks back to the import: the model's loading is this process's own
_last_answer: float | None = None


def cores_used_by_others() -> float | None:
    """How many cores other processes kept busy since the previous look (the first one: since var_clip was
    imported): the machine's busy CPU time less this process's own, over the wall time between the looks. None
    where the system cannot say. Other Python threads of this process count as this process."""
    global _last_look, _last_answer
    now = _cpu_clock()
    if now is None or _last_look is None:
        _last_look = now
        return None
    seconds = now[0] - _last_look[0]
    if seconds < MIN_LOOK_SECONDS:
        return _last_answer
    _last_answer = max(0.0, ((now[1] - _last_look[1]) - (now[2] - _last_look[2])) / seconds)
    _last_look = now
    return _last_answer


_DEFAULT_THREADS = _torch_default_threads()


def user_chose_threads() -> bool:
    """Whether the intra-op thread count is the user's: an environment variable, a ``torch.set_num_threads`` call
    that left a count other than torch's default, or a block under :func:`pinned_threads`."""
    if _pinned or any(os.environ.get(name, "").strip() for name in _ENVIRONMENT):
        return True
    return torch.get_num_threads() != _DEFAULT_THREADS


@contextmanager
def intra_op_threads(num_threads: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(num_threads)``, then restore the previous count.

    The count is process-wide: use it where the process is yours (a command line, a worker), not in a library call
    that other threads share.
    """
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"num_threads must be an int of at least 1, got {num_threads!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def pinned_threads(num_threads: int | None) -> Iterator[None]:
    """Run the block with ``num_threads`` intra-op threads chosen by the user: pipeline calls inside keep the count,
    even when it equals torch's default. ``None`` leaves the count and the automatic choice as they are (a command
    whose ``--threads`` was not given)."""
    if num_threads is None:
        yield
        return
    with intra_op_threads(num_threads):
        _pinned.append(num_threads)
        try:
            yield
        finally:
            _pinned.pop()


def thread_count_for(work: float, others: float | None = None) -> int:
    """The thread count for ``work``: torch's default when other processes use fewer than :data:`IDLE_BELOW_CORES`
    cores (``others``, None: not known), else one per :data:`WORK_PER_THREAD`, at least one and at most torch's
    default."""
    if others is not None and others < IDLE_BELOW_CORES:
        return _DEFAULT_THREADS
    return max(1, min(_DEFAULT_THREADS, int(work // WORK_PER_THREAD)))


@contextmanager
def threads_for_work(work: float) -> Iterator[int]:
    """Run the block with the thread count that suits ``work`` (transformer parameters × tokens per image × rows,
    see :data:`WORK_PER_THREAD`) on this machine as busy as it is now (:func:`cores_used_by_others`), unless the user
    chose the count; restore the count afterwards, also on error.

    Yields the count the block runs with.
    """
    if user_chose_threads():
        yield torch.get_num_threads()
        return
    chosen = thread_count_for(work, cores_used_by_others())
    with intra_op_threads(chosen):
        yield chosen
