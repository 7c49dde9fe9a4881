"""Data order and sharding: resumable training order, every validation image scored once."""

import torch

from model.data.loader import collate
from model.datamodule import EpochShuffleSampler, SegmentationDataModule, ShardSampler


def test_training_order_depends_only_on_seed_and_epoch():
    a, b = EpochShuffleSampler(10, seed=3), EpochShuffleSampler(10, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    b.set_epoch(3)
    assert list(a) != list(b)
    assert sorted(a) == list(range(10))


def test_training_shards_are_equal_and_cover_the_set():
    shards = [EpochShuffleSampler(10, seed=0, num_replicas=3, rank=r) for r in range(3)]
    orders = [list(s) for s in shards]
    assert all(len(o) == 4 == len(s) for o, s in zip(orders, shards))
    assert set(sum(orders, [])) == set(range(10))


def test_skip_resumes_mid_epoch_once():
    sampler = EpochShuffleSampler(8, seed=1)
    full = list(sampler)
    sampler.skip = 3
    assert list(sampler) == full[3:]
    assert len(sampler) == 8  # the loop counts the skipped batches as done
    assert list(sampler) == full  # the next pass is whole again


def test_validation_shards_neither_pad_nor_drop():
    shards = [list(ShardSampler(7, num_replicas=2, rank=r)) for r in range(2)]
    assert shards == [[0, 2, 4, 6], [1, 3, 5]]


def test_full_training_batches_drop_only_the_short_last_one():
    # A CUDA-graph step replays one batch shape: with full_train_batches every batch has the spec's size.
    item = {"image": torch.zeros(3, 32, 32, dtype=torch.uint8), "labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 32, 32, dtype=torch.bool),
            "size": (32, 32), "orig_size": (32, 32), "image_id": 0, "file_name": "a.png", "index": 0}  # fmt: skip
    for full, sizes in ((False, [4, 4, 2]), (True, [4, 4])):
        module = SegmentationDataModule([item] * 10, None, collate, train_batch_size=4, val_batch_size=4, num_workers=0, full_train_batches=full)
        assert [len(batch["images"]) for batch in module.train_dataloader()] == sizes
