"""The one buffer pool and chunk budget that the fused CPU path and the torch NA backend share."""

import torch

from stylenat.ops import buffers, na2d
from tests.fakes import fake_cuda


def test_chunk_budget_is_a_cpu_notion():
    assert buffers.CPU_CHUNK_ELEMS == 1 << 20
    assert not hasattr(buffers, "CHUNK_ELEMS")


def test_sample_chunks_cover_every_row_once():
    for batch, rows, width, budget in ((3, 1000, 64, 1 << 12), (5, 10, 8, 1 << 10), (2, 195, 128, 1 << 20)):
        seen = torch.zeros(batch, rows, dtype=torch.long)
        for samples, part in buffers.sample_chunks(batch, rows, width, budget):
            assert samples.stop - samples.start == 1 or (part.start, part.stop) == (0, rows)
            seen[samples, part] += 1
        assert bool((seen == 1).all())
    assert len(buffers.sample_chunks(5, 10, 8, 1 << 10)) == 1  # small maps: whole samples in one product


def test_one_buffer_pool_for_the_layers_and_neighborhood_attention():
    buffers.release_buffers()
    x = torch.randn(1, 2, 16, 16, 4)
    pool = buffers.pool_for(x)
    assert buffers.pool_for(x) is pool  # per thread, kept between calls
    with torch.no_grad():
        na2d(x, x, x, 5)  # the torch backend's scratch space
    names = {name for name, _ in pool._buffers}
    assert names and all(name.startswith("na.") for name in names)
    heads = buffers.buffer("heads", (2, 3), x)
    assert ("heads", torch.float32) in pool._buffers and heads.shape == (2, 3)
    with torch.inference_mode():  # made under inference_mode, still writable afterwards
        buffers.buffer("late", (8,), x)
    buffers.buffer("late", (8,), x).fill_(1.0)
    buffers.release_buffers()
    assert buffers.pool_for(x) is not pool
    assert buffers.pool_for(fake_cuda(x)) is not buffers.pool_for(fake_cuda(x))  # per call off the CPU
