"""Scale-out for ``samplers bench`` on torch.distributed (``torchrun --nproc-per-node N -m samplers bench``).

Every rank samples a contiguous shard of the sample indices. Sample ``i`` gets the Philox key
``batch_seeds(seed, 1, sample_offset=i)`` wherever it runs, so its initial noise and every in-step
noise draw are the same for any world size; the oracle denoiser and the update are row-wise, so
the gathered samples, and the metrics rank 0 computes on them, equal a one-process run bit for bit.
Only rank 0 prints and writes files.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch

F64 = torch.float64


def shard(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """``(n_local, offset)``: rank ``r`` gets indices ``[offset, offset + n_local)``; sizes differ by at most 1."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    base, extra = divmod(n, world_size)
    n_local = base + (1 if rank < extra else 0)
    offset = rank * base + min(rank, extra)
    return n_local, offset


@dataclass
class DistContext:
    """Where this process sits in the job. The default (one process) needs no torch.distributed."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def shard(self, n: int) -> tuple[int, int]:
        return shard(n, self.rank, self.world_size)

    def gather_rows(self, local: torch.Tensor, n_total: int) -> torch.Tensor | None:
        """Concatenate every rank's [n_local, ...] shard in rank order (float64) on rank 0; None elsewhere.

        Shards are cast to float64 first (lossless for every storage dtype and supported by gloo and NCCL).
        """
        local = local.to(F64)
        if not self.active:
            return local
        import torch.distributed as dist

        sizes = [shard(n_total, r, self.world_size)[0] for r in range(self.world_size)]
        biggest = max(sizes)
        padded = torch.zeros((biggest, *local.shape[1:]), dtype=F64, device=local.device)
        padded[: local.shape[0]] = local
        pieces = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(pieces, padded)
        if not self.is_main:
            return None
        return torch.cat([p[:s] for p, s in zip(pieces, sizes, strict=True)])

    def reduce_max(self, value: float, device: torch.device | str = "cpu") -> float:
        """The largest ``value`` over ranks (every rank gets it)."""
        if not self.active:
            return float(value)
        import torch.distributed as dist

        t = torch.tensor([float(value)], dtype=F64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t[0])

    def broadcast_object(self, obj: object) -> object:
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        """Tear down the process group if this context created it."""
        if self.initialized_here:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.initialized_here = False


def launched_distributed() -> bool:
    """True under torchrun (or any launcher) with ``WORLD_SIZE > 1``."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def init_from_env(device: str = "cpu", timeout_s: float = 600.0) -> DistContext:
    """A :class:`DistContext` from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ...).

    With ``WORLD_SIZE`` unset or 1 this is the one-process context. Otherwise it initializes the
    default process group (gloo on CPU, NCCL on CUDA) unless one exists, and on CUDA selects
    ``cuda:LOCAL_RANK``.
    """
    if not launched_distributed():
        return DistContext()
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    on_cuda = str(device).startswith("cuda")
    backend = "nccl" if on_cuda else "gloo"
    created = False
    if not dist.is_initialized():
        if on_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
        created = True
    else:
        backend = dist.get_backend()
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, backend=backend, initialized_here=created)
