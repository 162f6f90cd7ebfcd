"""Resumable, rank-sharded infinite sampling and the DataLoader built on it.

The global stream: epoch e is a permutation of ``range(dataset_len)`` drawn from
``numpy.random.RandomState([seed, e])`` (a frozen legacy generator, so the stream is stable across
NumPy versions), or ``range(dataset_len)`` without shuffling; epochs are concatenated. Global position
p is element ``p % N`` of epoch ``p // N``. Rank r of W reads positions ``start + r, start + r + W, ...``,
so ranks partition the stream, and the stream itself does not depend on W.

Resuming: a position is the number of global stream items consumed by all ranks together, i.e. the
training loop's "images seen" counter (per-rank batches x batch size x world size). Start a new sampler
(or ``build_loader``) with ``start_index=images_seen`` and the same indices follow, in O(N) time,
even with another world size. Record the count from the training loop (or ``BatchStream.position``),
not from the sampler: a DataLoader pulls indices ahead of what the loop has consumed.

A data set smaller than one batch is allowed (a few-image smoke test): the stream simply wraps, so a
batch repeats images (from successive epochs). ``build_loader`` warns about it once (rank 0), naming both
sizes, since for real training it almost always means the wrong path.
"""

from __future__ import annotations

import operator
import random
import signal
import warnings

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from stylenat.data.errors import DatasetError, DatasetWarning


def _check_int(name: str, value, minimum: int) -> int:
    try:
        v = operator.index(value)
    except TypeError:
        raise DatasetError(f"{name} must be an integer >= {minimum}, got {value!r}") from None
    if v < minimum:
        raise DatasetError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return v


class InfiniteSampler(Sampler[int]):
    """Endless deterministic index stream for one rank; resumable at any global position."""

    def __init__(
        self,
        dataset_len: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        start_index: int = 0,
    ):
        self.dataset_len = _check_int("dataset_len", dataset_len, 1)
        self.world_size = _check_int("world_size", world_size, 1)
        self.rank = _check_int("rank", rank, 0)
        if self.rank >= self.world_size:
            raise DatasetError(f"rank {rank} must be smaller than world_size {world_size}")
        self.seed = _check_int("seed", seed, 0)
        if self.seed >= 2**32:
            raise DatasetError(f"seed must be below 2**32, got {seed}")
        self.shuffle = bool(shuffle)
        self.position = _check_int("start_index", start_index, 0)
        self._epoch, self._order = None, None

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The index order of one epoch of the global stream."""
        if epoch != self._epoch:
            if self.shuffle:
                self._order = np.random.RandomState([self.seed, epoch]).permutation(self.dataset_len)
            else:
                self._order = np.arange(self.dataset_len)
            self._epoch = epoch
        return self._order

    def index_at(self, position: int) -> int:
        """The data set index at a global stream position."""
        epoch, offset = divmod(position, self.dataset_len)
        return int(self.epoch_order(epoch)[offset])

    def __iter__(self):
        """Yield this rank's indices from ``self.position`` on; ``position`` advances by
        ``world_size`` per yielded index (all ranks are assumed to move in step)."""
        while True:
            index = self.index_at(self.position + self.rank)
            self.position += self.world_size
            yield index

    def state_dict(self) -> dict:
        """Position and settings; only exact when the sampler is iterated directly (see module doc)."""
        return {
            "position": self.position,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "dataset_len": self.dataset_len,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved position; refuses a state from another seed, order or data set size."""
        for key in ("seed", "shuffle", "dataset_len"):
            if key in state and state[key] != getattr(self, key):
                raise DatasetError(
                    f"sampler state has {key}={state[key]!r}, this sampler has {getattr(self, key)!r}"
                )
        self.position = _check_int("position", state["position"], 0)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed Python and NumPy from the worker's torch seed (which the
    loader derives from its seeded generator), for datasets or transforms that draw random numbers.

    Workers ignore SIGINT: Ctrl-C reaches the whole process group, and the training process handles it
    (a state at the step boundary) only if its workers keep serving batches until then."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


class BatchStream:
    """Endless iterator of batches that counts what the caller consumed.

    ``position`` is the global stream position after the batches returned so far
    (``start_index + batches * batch_size * world_size``): save it and pass it back as ``start_index``.
    """

    def __init__(
        self, loader: DataLoader, sampler: InfiniteSampler, batch_size: int, world_size: int, start_index: int
    ):
        self.loader = loader
        self.sampler = sampler
        self.batch_size = batch_size
        self.world_size = world_size
        self.position = start_index
        self._it = None

    def __iter__(self):
        return self

    def __next__(self):
        if self._it is None:
            self._it = iter(self.loader)
        batch = next(self._it)
        self.position += self.batch_size * self.world_size
        return batch

    def state_dict(self) -> dict:
        """``{"position": images consumed globally}``, for checkpoints."""
        return {"position": self.position}


def warn_if_smaller_than_batch(dataset, global_batch: int, world_size: int = 1, rank: int = 0) -> bool:
    """Warn (rank 0 only) when ``dataset`` has fewer items than one global batch; returns whether it has."""
    n = len(dataset)
    if n >= global_batch:
        return False
    if rank == 0:
        images = getattr(dataset, "num_images", n)
        items = f"{n} items ({images} images x 2 with x-flip)" if images != n else f"{n} images"
        per = f" ({global_batch // world_size} per process x {world_size})" if world_size > 1 else ""
        where = getattr(dataset, "path", None)
        warnings.warn(
            f"the data set{f' {where}' if where is not None else ''} holds {items}, fewer than one batch "
            f"of {global_batch}{per}: images repeat within every batch",
            DatasetWarning,
            stacklevel=3,
        )
    return True


def build_loader(
    dataset,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    start_index: int = 0,
    num_workers: int = 0,
    shuffle: bool = True,
    prefetch_factor: int | None = None,
) -> BatchStream:
    """An endless stream of batches of ``batch_size`` (per rank) drawn with ``InfiniteSampler``.

    Batches depend only on (dataset, batch_size, rank, world_size, seed, start position), not on
    ``num_workers``: the DataLoader keeps sampler order, and our data sets use no RNG. Memory is pinned
    only when CUDA is available; workers persist across the stream.
    """
    batch_size = _check_int("batch_size", batch_size, 1)
    num_workers = _check_int("num_workers", num_workers, 0)
    sampler = InfiniteSampler(len(dataset), rank, world_size, shuffle, seed, start_index)
    warn_if_smaller_than_batch(dataset, batch_size * sampler.world_size, sampler.world_size, rank)
    generator = torch.Generator()
    generator.manual_seed(seed * 1_000_003 + rank)
    kwargs = {}
    if num_workers > 0:
        kwargs = {"persistent_workers": True, "worker_init_fn": seed_worker}
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        drop_last=True,
        generator=generator,
        **kwargs,
    )
    return BatchStream(loader, sampler, batch_size, sampler.world_size, sampler.position)
