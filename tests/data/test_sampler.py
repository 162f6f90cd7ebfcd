import itertools
import warnings

import numpy as np
import pytest
import torch

from stylenat.data import (
    DatasetError,
    DatasetWarning,
    InfiniteSampler,
    build_dataset,
    build_loader,
    prepare_dataset,
)

from .conftest import RES, write_lmdb, zip_image_bytes


def take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


@pytest.mark.parametrize("shuffle", [True, False])
def test_resume_continues_the_same_stream(shuffle):
    full = take(InfiniteSampler(7, shuffle=shuffle, seed=3), 40)
    for n in (0, 5, 7, 13):
        resumed = take(InfiniteSampler(7, shuffle=shuffle, seed=3, start_index=n), 40 - n)
        assert resumed == full[n:]


def test_epochs_are_permutations_and_seeds_differ():
    stream = take(InfiniteSampler(10, seed=1), 30)
    for e in range(3):
        assert sorted(stream[10 * e : 10 * e + 10]) == list(range(10))
    assert stream[:10] != stream[10:20]
    assert stream != take(InfiniteSampler(10, seed=2), 30)
    assert take(InfiniteSampler(10, shuffle=False), 12) == list(range(10)) + [0, 1]


def test_ranks_partition_the_global_stream():
    world = take(InfiniteSampler(9, seed=5), 36)
    ranks = [take(InfiniteSampler(9, rank=r, world_size=3, seed=5), 12) for r in range(3)]
    assert [x for step in zip(*ranks) for x in step] == world
    # Resuming on rank 1 after 6 global items (2 per rank), even from a run with another world size.
    assert take(InfiniteSampler(9, rank=1, world_size=3, seed=5, start_index=6), 4) == ranks[1][2:6]
    assert take(InfiniteSampler(9, rank=0, world_size=2, seed=5, start_index=6), 3) == world[6:12:2]


def test_state_dict_round_trip():
    s = InfiniteSampler(11, rank=1, world_size=2, seed=4)
    it = iter(s)
    first = [next(it) for _ in range(5)]
    state = s.state_dict()
    assert state["position"] == 10
    t = InfiniteSampler(11, rank=1, world_size=2, seed=4)
    t.load_state_dict(state)
    assert take(t, 6) == [next(it) for _ in range(6)]
    assert first == take(InfiniteSampler(11, rank=1, world_size=2, seed=4), 5)
    with pytest.raises(DatasetError, match="sampler state has seed=4, this sampler has 9"):
        InfiniteSampler(11, seed=9).load_state_dict(state)


def test_sampler_argument_errors():
    with pytest.raises(DatasetError, match="rank 2 must be smaller than world_size 2"):
        InfiniteSampler(5, rank=2, world_size=2)
    with pytest.raises(DatasetError, match="dataset_len must be an integer >= 1, got 0"):
        InfiniteSampler(0)
    with pytest.raises(DatasetError, match="start_index must be an integer >= 0, got -1"):
        InfiniteSampler(3, start_index=-1)


@pytest.fixture(scope="module")
def small_zip(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    rng = np.random.default_rng(0)
    from PIL import Image

    (root / "imgs").mkdir()
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (RES, RES, 3), dtype=np.uint8)).save(root / "imgs" / f"{i}.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)
        prepare_dataset(root / "imgs", root / "d.zip", RES)
    write_lmdb(root / "lmdb", zip_image_bytes(root / "d.zip"), RES)
    return root


def batches(stream, n):
    return [next(stream) for _ in range(n)]


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("fmt", ["d.zip", "lmdb"])
def test_loader_resume_gives_the_same_batches(small_zip, num_workers, fmt):
    ds = build_dataset(small_zip / fmt, RES, xflip=True)
    ds[0]  # the main process holds an open handle when the workers fork
    reference = batches(build_loader(ds, 3, seed=7, num_workers=0), 6)
    stream = build_loader(ds, 3, seed=7, num_workers=num_workers)
    first = batches(stream, 2)
    assert stream.position == 6 and stream.state_dict() == {"position": 6}
    resumed = build_loader(ds, 3, seed=7, start_index=stream.position, num_workers=num_workers)
    for a, b in zip(first + batches(resumed, 4), reference):
        assert a.shape == (3, 3, RES, RES)
        assert torch.equal(a, b)
    assert resumed.position == 18


def test_loader_ranks_split_each_global_batch(small_zip):
    ds = build_dataset(small_zip / "d.zip", RES, normalize=None)
    single = batches(build_loader(ds, 4, seed=1), 2)
    r0 = batches(build_loader(ds, 2, rank=0, world_size=2, seed=1), 2)
    r1 = batches(build_loader(ds, 2, rank=1, world_size=2, seed=1), 2)
    for step in range(2):
        mixed = torch.stack([r0[step][0], r1[step][0], r0[step][1], r1[step][1]])
        assert torch.equal(mixed, single[step])
