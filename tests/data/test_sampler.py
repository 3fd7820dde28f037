"""The samplers behind both loaders: sharding, padding, the mid-epoch start, and an order that is a pure
function of (seed, epoch). Expected orders are written out by hand."""
from __future__ import annotations

import pytest

from wsol_fast.data.sampler import ShardSampler, TrainSampler


def test_train_sampler_shards_like_distributed_sampler_with_padding():
    # 5 samples on 2 ranks: padded to 6 by repeating the first, then rank r takes positions r, r+2, r+4.
    ranks = [TrainSampler(5, rank=r, world_size=2, shuffle=False) for r in range(2)]
    assert [list(s) for s in ranks] == [[0, 2, 4], [1, 3, 0]]
    assert [len(s) for s in ranks] == [3, 3] and ranks[0].per_rank == 3


def test_train_sampler_start_skips_the_samples_already_done():
    sampler = TrainSampler(5, rank=1, world_size=2, shuffle=False)
    sampler.set_epoch(0, start=2)
    assert list(sampler) == [0] and len(sampler) == 1


def test_train_order_is_a_function_of_seed_and_epoch():
    def order(seed, epoch, start=0):
        s = TrainSampler(10, seed=seed)
        s.set_epoch(epoch, start)
        return list(s)

    assert sorted(order(3, 0)) == list(range(10))           # a permutation of the split
    assert order(3, 1) == order(3, 1)                        # the same (seed, epoch): the same order
    assert order(3, 4, start=6) == order(3, 4)[6:]           # a resume continues it exactly
    assert len({tuple(order(3, e)) for e in range(5)}) > 1   # it changes from epoch to epoch
    assert order(3, 0) != order(4, 0)


def test_shard_sampler_covers_every_sample_once():
    assert [list(ShardSampler(7, rank=r, world_size=3)) for r in range(3)] == [[0, 3, 6], [1, 4], [2, 5]]
    assert len(ShardSampler(2, rank=2, world_size=3)) == 0   # more ranks than samples: nothing, no padding


def test_train_sampler_refuses_an_empty_split():
    with pytest.raises(ValueError, match="non-empty"):
        TrainSampler(0)
