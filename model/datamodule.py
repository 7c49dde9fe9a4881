"""Data loaders for training and validation, one shard per process, resumable data order.

Training order is a function of (seed, epoch) alone, so a run resumed from a checkpoint sees
the same batches it would have seen. Validation shards the set without padding or dropping,
so every image is scored exactly once (the reference drops the last partial batch).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator, Sequence

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class EpochShuffleSampler(Sampler[int]):
    """A shuffled shard of the dataset whose order depends only on (seed, epoch).

    Every process takes an equal share (the last indices repeat to even it out, as training
    needs equal step counts on every process). `skip` drops the first indices of the next
    epoch only: a run resumed mid-epoch continues where it stopped.
    """

    def __init__(self, size: int, seed: int, num_replicas: int = 1, rank: int = 0):
        self.size, self.seed, self.num_replicas, self.rank = size, seed, num_replicas, rank
        self.epoch, self.skip = 0, 0
        self.per_replica = math.ceil(size / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        order += order[: self.per_replica * self.num_replicas - self.size]
        shard = order[self.rank :: self.num_replicas]
        skip, self.skip = self.skip, 0
        return iter(shard[skip:])

    def __len__(self) -> int:
        # Constant, even while skipping: the training loop counts the skipped batches as done.
        return self.per_replica


class ShardSampler(Sampler[int]):
    """Indices rank, rank + world, ... in order: every item once over all processes."""

    def __init__(self, size: int, num_replicas: int = 1, rank: int = 0):
        self.indices = list(range(rank, size, num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class WithGroundTruth(Dataset):
    """Adds `ground_truth(index)` to each item so workers, not the training loop, read it."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        item = self.dataset[index]
        item["ground_truth"] = self.dataset.ground_truth(index)
        return item


class SegmentationDataModule(pl.LightningDataModule):
    """Training and validation loaders over datasets built by `model.data`.

    Args:
        train_set, val_set: datasets returning item dicts; val_set must have ground_truth(i).
        collate: the batch collate of `model.data` (pads to multiples of 32).
        train_batch_size, val_batch_size, num_workers, pin_memory: loader settings per process.
        seed: the data-order seed.
        full_train_batches: drop an epoch's last, smaller training batch (a CUDA-graph step
            replays one batch shape; any other runs eagerly, with memory of its own).
    """

    def __init__(
        self,
        train_set: Dataset | None,
        val_set: Any,
        collate: Callable[[list[dict]], dict],
        *,
        train_batch_size: int,
        val_batch_size: int,
        num_workers: int,
        pin_memory: bool = True,
        seed: int = 0,
        full_train_batches: bool = False,
    ):
        super().__init__()
        self.train_set, self.val_set, self.collate = train_set, val_set, collate
        self.train_batch_size, self.val_batch_size = train_batch_size, val_batch_size
        self.num_workers, self.pin_memory, self.seed = num_workers, pin_memory and torch.cuda.is_available(), seed
        self.full_train_batches = full_train_batches
        self.train_sampler: EpochShuffleSampler | None = None
        self.resume_skip_batches = 0

    def state_dict(self) -> dict[str, int]:
        """Saved in every checkpoint: how far into its epoch training was."""
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"batches_done_in_epoch": done if done < self.trainer.num_training_batches else 0}

    def load_state_dict(self, state: dict[str, int]) -> None:
        # Resumed mid-epoch: the batches already trained on this epoch come off the front.
        self.resume_skip_batches = state.get("batches_done_in_epoch", 0)
        if self.train_sampler is not None:
            self.train_sampler.skip = self.resume_skip_batches * self.train_batch_size

    def _replicas(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def train_dataloader(self) -> DataLoader:
        world, rank = self._replicas()
        self.train_sampler = EpochShuffleSampler(len(self.train_set), self.seed, world, rank)
        self.train_sampler.skip = self.resume_skip_batches * self.train_batch_size
        return self._loader(self.train_set, self.train_batch_size, self.train_sampler, self.collate, drop_last=self.full_train_batches)

    def val_dataloader(self) -> DataLoader:
        world, rank = self._replicas()
        return self._loader(WithGroundTruth(self.val_set), self.val_batch_size, ShardSampler(len(self.val_set), world, rank), GroundTruthCollate(self.collate))

    def _loader(self, dataset: Dataset, batch_size: int, sampler: Sampler, collate: Callable, drop_last: bool = False) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=collate,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            drop_last=drop_last,
            persistent_workers=self.num_workers > 0,
        )


class GroundTruthCollate:
    """A collate whose per-image ground truths travel as a list beside the batch.

    A class, not a closure, so worker processes can pickle it.
    """

    def __init__(self, collate: Callable[[list[dict]], dict]):
        self.collate = collate

    def __call__(self, items: Sequence[dict]) -> dict:
        ground_truths = [item.pop("ground_truth") for item in items]
        batch = self.collate(list(items))
        batch["ground_truths"] = ground_truths
        return batch
