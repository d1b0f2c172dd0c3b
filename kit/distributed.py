"""Several processes training one model: ``torchrun --nproc_per_node N -m kit.train MODEL ...``.

torchrun starts N copies of ``kit.train`` with ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in
their environment. :func:`start` joins them into one process group (NCCL on CUDA, gloo on
CPU) and returns this process's :class:`Group`; without torchrun it returns :data:`SINGLE`,
a group of one whose operations do nothing, so the training code reads the same either way.

Conventions
    Rank 0 (``group.main``) alone writes files: run folder, logs, checkpoints, model folder,
    out-of-fold rows. Every decision that ends a loop (time budget, a non-finite step) is
    agreed through the group, so no rank waits alone in a collective.
    A global batch (the config's ``batch_size``) = ``world`` ranks x ``accumulate`` micro
    batches x the micro batch; :func:`rank_batches` deals each global step's images out.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

__all__ = ["Group", "SINGLE", "start", "current", "finish", "rank_batches", "micro_batch",
           "parallel_env"]

# How long a rank waits in a collective (rank 0 validates while the others wait at a barrier).
TIMEOUT_MIN = float(os.environ.get("KIT_DIST_TIMEOUT_MIN", "60"))


@dataclass(frozen=True)
class Group:
    """This process's place among the training processes (``world`` of them)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """True for the one process that writes (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def mean(self, values) -> list[float]:
        """The element-wise mean over ranks of a list of floats (every rank gets it)."""
        values = [float(v) for v in values]
        if not self.distributed:
            return values
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return (t / self.world).tolist()

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on at least one."""
        if not self.distributed:
            return bool(flag)
        import torch
        import torch.distributed as dist

        t = torch.tensor([1 if flag else 0], dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())


SINGLE = Group()
_current = SINGLE


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value != "" else default
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def start() -> Group:
    """Join the torchrun process group (once; later calls return it): gloo on CPU, NCCL when
    CUDA is available (each rank on ``cuda:LOCAL_RANK``). Without torchrun (``WORLD_SIZE``
    unset or 1): :data:`SINGLE`, nothing initialised."""
    global _current
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return SINGLE
    if _current.distributed:
        return _current
    import torch
    import torch.distributed as dist

    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=TIMEOUT_MIN))
    _current = Group(rank=rank, world=world, local_rank=local)
    return _current


def current() -> Group:
    """The group :func:`start` joined (:data:`SINGLE` before, or without torchrun)."""
    return _current


def finish() -> None:
    """Leave the process group (after the last collective)."""
    global _current
    if _current.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    _current = SINGLE


def parallel_env(n_parallel: int) -> tuple[int, dict]:
    """``(threads, environment)`` for one of ``n_parallel`` independent processes run side by
    side on CPU (folds, models): the cores shared out (>= 1 thread each) and ``os.environ`` with
    OMP/MKL pinned to them. Single-threaded runs side by side do about twice the steps of one
    after the other on 2 cores."""
    threads = max(1, (os.cpu_count() or 1) // max(1, n_parallel))
    return threads, {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def cpu_threads() -> int:
    """CPU threads this process computes with: ``OMP_NUM_THREADS`` when set to a positive
    integer (what :func:`parallel_env` pins and torch follows), else every core."""
    try:
        n = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        n = 0
    return n if n > 0 else (os.cpu_count() or 1)


def micro_batch(batch_size: int, world: int, accumulate: int) -> int:
    """Images per forward pass on one rank: ``batch_size / (world * accumulate)``; a
    ValueError when that is not a whole number >= 1."""
    parts = world * accumulate
    if accumulate < 1 or batch_size % parts:
        raise ValueError(f"train.batch_size {batch_size} must be a multiple of processes ({world}) "
                         f"x train.accumulate ({accumulate})")
    return batch_size // parts


def rank_batches(order, batch_size: int, group: Group, accumulate: int = 1) -> list[list[list[int]]]:
    """This rank's micro batches, per global step: ``out[step][j]`` = the image indices of its
    ``j``-th micro batch (``accumulate`` of them) of step ``step``.

    ``order``: every index of the epoch once, in the epoch's order (e.g. ``torch.randperm``).
    Global step ``k`` takes ``order[k*B:(k+1)*B]`` (``B = batch_size``), micro batch ``m`` of
    it ``m*b:(m+1)*b`` (``b`` = :func:`micro_batch`), and rank ``r`` gets micro batches
    ``r*accumulate .. (r+1)*accumulate - 1``: the same images in a step whatever the number of
    processes. With one process and no accumulation the last step is what is left (as a
    DataLoader with ``drop_last=False``); otherwise it is filled up from the start of
    ``order`` so that every rank has the same number of images to work on."""
    order = [int(i) for i in order]
    b = micro_batch(batch_size, group.world, accumulate)
    steps = []
    for start_ in range(0, len(order), batch_size):
        chunk = order[start_:start_ + batch_size]
        if len(chunk) < batch_size and (group.world > 1 or accumulate > 1):
            chunk += (order * (batch_size // max(len(order), 1) + 1))[:batch_size - len(chunk)]
        micro = [chunk[m * b:(m + 1) * b] for m in range(group.world * accumulate)]
        mine = [m for m in micro[group.rank * accumulate:(group.rank + 1) * accumulate] if m]
        steps.append(mine)
    return steps
