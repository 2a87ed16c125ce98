"""Training one MLP on several processes with torch DistributedDataParallel, under torchrun.

    torchrun --standalone --nproc_per_node=K -m hashtagkit.cli fit STORE --head mlp ...

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address in each process's
environment; `from_env` reads them and `start` joins the process group (NCCL between GPUs,
gloo on CPUs), each process on the GPU of its LOCAL_RANK. Outside torchrun (or with one
process) none of this happens and `fit` trains as always.

What the MLP does with a `World` (hashtagkit/heads/mlp.py):
- each rank trains on a disjoint share of the blocks (`share`: every world_size-th block),
  so a rank reads only its chunks of the store;
- `batch_size` stays the *global* batch: each rank takes batch_size / world_size rows a step,
  so K processes and one make the same optimisation up to the order of the rows;
- every rank runs the same number of steps an epoch (the smallest share's, agreed by an
  all-reduce), or DDP's gradient all-reduce would wait forever for a rank that has finished;
- the standardisation statistics, the prior and the early-stopping metric are sums
  all-reduced over the ranks, so every rank stops at the same epoch with the same weights;
- only rank 0 writes the run (hashtagkit/runs.py), which records the world size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from hashtagkit.errors import InputError

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def writer(self) -> bool:
        """The one process that writes artefacts."""
        return self.rank == 0

    def record(self) -> dict:
        return {"world_size": self.size, "backend": self.backend}


SINGLE = World()


def from_env() -> World:
    """The world torchrun describes in the environment, or a single process."""
    if "WORLD_SIZE" not in os.environ:
        return SINGLE
    try:
        rank, size, local = (int(os.environ.get(name, "0")) for name in ENV)
    except ValueError:
        raise InputError(f"torchrun's {', '.join(ENV)} must be integers") from None
    return World(rank, size, local) if size > 1 else SINGLE


def start(world: World, device: str = "auto") -> World:
    """Join the process group of a multi-process world (a no-op for one process)."""
    if not world.distributed:
        return world
    import torch
    import torch.distributed as dist

    cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    if cuda:
        if world.local_rank >= torch.cuda.device_count():
            raise InputError(f"torchrun started more processes on this machine than it has GPUs "
                             f"({torch.cuda.device_count()}): start one per GPU, or train on the CPU with gloo "
                             "(--set device=cpu)")
        torch.cuda.set_device(world.local_rank)
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return World(world.rank, world.size, world.local_rank, backend)


def current() -> World:
    """The world of the process group this process has joined, or a single process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), dist.get_backend())
    return SINGLE


def stop(world: World) -> None:
    if world.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def row_share(train_mask: np.ndarray, world: World) -> tuple[int, int]:
    """The positions [start, stop) rank `world.rank` trains on: contiguous ranges cut so each
    holds the same number of training rows (`train_mask` True) to within one, whatever the
    blocks: every training row is in exactly one share, and an epoch of equal steps on every
    rank sees all of them but less than a global batch (the shares' last partial batches)."""
    counts = np.cumsum(np.asarray(train_mask, dtype=np.int64))
    n_train = int(counts[-1]) if len(counts) else 0
    cuts = [0] + [int(np.searchsorted(counts, round(k * n_train / world.size))) + 1
                  for k in range(1, world.size)] + [len(train_mask)]
    return cuts[world.rank], cuts[world.rank + 1]


def all_sum(values: np.ndarray, world: World) -> np.ndarray:
    """Elementwise sum over the ranks (float64), or the values themselves for one process."""
    values = np.asarray(values, dtype=np.float64)
    if not world.distributed:
        return values
    import torch
    import torch.distributed as dist

    t = torch.from_numpy(values.copy())
    if world.backend == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().numpy()


def all_min(value: int, world: World) -> int:
    if not world.distributed:
        return int(value)
    import torch
    import torch.distributed as dist

    t = torch.tensor([int(value)], dtype=torch.int64)
    if world.backend == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())
