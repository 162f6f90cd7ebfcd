"""Every rank / world / process-group concern of training lives here, so the loop reads as single-process.

Launch: plain ``python train.py`` is one process; ``torchrun --nproc_per_node=N train.py`` sets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT, and ``init`` joins the group (gloo on the CPU,
nccl on CUDA).

Gradient sync: instead of wrapping G and D in DistributedDataParallel, gradients are averaged with one
flattened all-reduce per optimizer step (``all_reduce_grads``), as StyleGAN3's loop does. The training
step calls ``G.mapping`` and ``G.synthesis`` separately (DDP only hooks ``forward``), R1 needs a double
backward (unsupported by DDP's reducer), and gradient accumulation needs one sync per step rather than
per micro-batch; the explicit all-reduce handles all three and keeps ranks bit-identical.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class DistEnv:
    """Who this process is and where it computes."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_rank() -> int:
    """This process's rank from the launcher's environment (0 when not launched by torchrun)."""
    return int(os.environ.get("RANK", "0"))


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """'auto' | 'cpu' | 'cuda' -> a concrete device. On GPUs: cuda:0 when this process sees one device
    (a launcher or scheduler that gives each rank its own GPU through CUDA_VISIBLE_DEVICES), else
    cuda:<local_rank> (every rank of the node sees every GPU)."""
    if device not in DEVICES:
        raise ValueError(f"device={device!r} is not one of {', '.join(DEVICES)}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device=cuda but no CUDA device is available (use device=cpu or device=auto)")
        count = torch.cuda.device_count()
        if count == 1:
            return torch.device("cuda", 0)
        if local_rank >= count:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            raise ValueError(
                f"LOCAL_RANK {local_rank} but only {count} CUDA devices are visible"
                + (f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else "")
                + ": start at most one process per visible GPU, or give each process one GPU"
            )
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init(device: str = "auto", timeout_min: float = 30.0) -> DistEnv:
    """Detect torchrun, pick the device and (for several processes) join the process group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = env_rank()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_min), **kwargs)
        log.info("joined process group: rank %d of %d (%s)", rank, world_size, backend)
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def shutdown() -> None:
    """Leave the process group (if one was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def report_failure(err: BaseException) -> None:
    """Log which rank failed and why (every rank logs errors), so a multi-process job names its culprit.
    The caller then exits without ``shutdown()``: the collective teardown would wait for ranks that are
    still computing, while a plain exit closes this rank's connections and makes their pending
    collectives fail at once."""
    if not _active():
        return
    rank, world = dist.get_rank(), dist.get_world_size()
    message = str(err).strip().splitlines()[0] if str(err).strip() else ""
    log.error(
        "rank %d of %d stopped: %s%s", rank, world, type(err).__name__, f": {message}" if message else ""
    )


def all_reduce_max(values: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum over ranks (returns a new tensor)."""
    out = values.clone()
    if _active():
        dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if _active():
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s picklable ``obj`` on every rank (e.g. the run dir, whose timestamp differs per rank)."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj) -> list:
    """Every rank's picklable ``obj``, in rank order, on every rank."""
    if not _active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def rank_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int, bool]:
    """(rank, world_size, distributed): from the process group when one is joined (explicit values win),
    else 0 / 1; a world over one process without a group, or a rank outside the world, raises ValueError."""
    initialised = dist.is_available() and dist.is_initialized()
    if initialised:
        rank = dist.get_rank() if rank is None else rank
        world_size = dist.get_world_size() if world_size is None else world_size
    else:
        rank = 0 if rank is None else rank
        world_size = 1 if world_size is None else world_size
        if world_size != 1:
            raise ValueError(f"world_size={world_size} needs an initialised torch.distributed process group")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    return rank, world_size, initialised and world_size > 1


def all_gather(t: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's tensor ``t`` (same shape on each), in rank order, on the CPU; ``[t]`` in one process."""
    if not _active():
        return [t]
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else t.device
    t = t.to(device).contiguous()
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return [o.cpu() for o in out]


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Average a tensor over ranks (returns a new tensor; the input is untouched)."""
    out = values.clone()
    if _active():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= dist.get_world_size()
    return out


def all_reduce_grads(params) -> None:
    """Average the gradients of ``params`` over ranks with one flattened all-reduce.

    Parameters without a gradient contribute zeros, so every rank passes the same buffer layout, and a
    count of the ranks that had one travels in the same buffer: a parameter that got no gradient on any
    rank is left with ``grad=None`` afterwards, so the optimizer skips it as it does in one process (a
    zero gradient would let Adam move it by its momentum); one with a gradient on some ranks gets the
    average over all ranks (zeros for the others, as DDP does). Reading the counts is a host sync, done
    only by a rank that lacks some gradient (one that has them all cannot have to drop any).
    """
    if not _active():
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    missing = [p.grad is None for p in params]
    for p, lacks in zip(params, missing):
        if lacks:
            p.grad = torch.zeros_like(p)
    if any(missing):
        counts = torch.tensor([not lacks for lacks in missing], dtype=params[0].grad.dtype)
        counts = counts.to(params[0].grad.device)
    else:  # no host-to-device copy
        counts = torch.ones(len(params), dtype=params[0].grad.dtype, device=params[0].grad.device)
    flat = torch.cat([p.grad.flatten() for p in params] + [counts])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    counts = flat[-len(params) :].tolist() if any(missing) else None
    flat /= dist.get_world_size()
    offset = 0
    for i, p in enumerate(params):
        n = p.numel()
        if counts is not None and counts[i] == 0:
            p.grad = None  # no rank had a gradient
        else:
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


def sync_buffers(module: torch.nn.Module) -> None:
    """Average the persistent floating-point buffers (e.g. the generator's running ``w_avg``) over ranks,
    in one flattened all-reduce. Constant buffers are identical everywhere and stay so."""
    if not _active():
        return
    persistent = set(module.state_dict().keys())
    bufs = [b for name, b in module.named_buffers() if name in persistent and b.is_floating_point()]
    if not bufs:
        return
    flat = torch.cat([b.detach().flatten() for b in bufs])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    with torch.no_grad():
        for b in bufs:
            b.copy_(flat[offset : offset + b.numel()].view_as(b))
            offset += b.numel()


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank (same start point everywhere)."""
    if not _active():
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=src)


def module_digest(*modules: torch.nn.Module) -> str:
    """sha256 (16 hex digits) over the parameters and buffers of ``modules``: equal digests = equal weights."""
    h = hashlib.sha256()
    for module in modules:
        for name, t in module.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def check_in_sync(*modules: torch.nn.Module) -> list[str]:
    """Digest of ``modules`` on every rank; raises RuntimeError naming the ranks that differ from rank 0."""
    digests = all_gather_object(module_digest(*modules))
    bad = [r for r, d in enumerate(digests) if d != digests[0]]
    if bad:
        raise RuntimeError(f"ranks {bad} hold different weights from rank 0 (digests {digests})")
    return digests
