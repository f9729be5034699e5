"""The book's synthetic overfitting task as a LightningDataModule.

``y = w_true · Σx + b_true + ε`` with ``x ~ N(0, I)`` in ``num_inputs`` dimensions
and only ``num_train`` training examples: with the defaults (20 examples, 200
inputs) a linear model can fit the training set exactly and still be far from
the truth, which is what weight decay is meant to fix.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from wd_lightning.core.errors import (
    InvalidArgumentError,
    check_finite,
    check_finite_non_negative,
    check_int_at_least,
)

__all__ = [
    "EpochSeededSampler",
    "InMemoryDataModule",
    "ResumableDataLoader",
    "SyntheticClassificationDataModule",
    "SyntheticRegressionDataModule",
    "TensorPairDataset",
    "already_batched",
    "make_linear_data",
]


def make_linear_data(
    num_examples: int,
    num_inputs: int,
    w_true: float,
    b_true: float,
    noise: float,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """Draw ``(X, y)``: ``y = X @ (w_true·1) + b_true + noise·N(0, 1)``, of shape (n, 1).

    Example:
        >>> X, y = make_linear_data(4, 3, 0.01, 0.05, 0.0, torch.Generator().manual_seed(0))
        >>> X.shape, y.shape
        (torch.Size([4, 3]), torch.Size([4, 1]))
        >>> torch.allclose(y, X.sum(1, keepdim=True) * 0.01 + 0.05)
        True
    """
    X = torch.randn(num_examples, num_inputs, generator=generator)
    w = torch.full((num_inputs, 1), float(w_true))
    y = X @ w + b_true + noise * torch.randn(num_examples, 1, generator=generator)
    return X, y


class TensorPairDataset(Dataset):
    """``(inputs, targets)`` rows of two tensors, fetched a whole batch at a time.

    A ``TensorDataset`` returns rows one by one and the DataLoader stacks them
    again; here the DataLoader's ``__getitems__`` hook indexes each tensor once
    per batch, which is most of the data-loading cost for small models.

    Example:
        >>> data = TensorPairDataset(torch.arange(6.0).reshape(3, 2), torch.arange(3.0))
        >>> loader = DataLoader(data, batch_size=2, collate_fn=already_batched)
        >>> [targets.tolist() for _, targets in loader]
        [[0.0, 1.0], [2.0]]
    """

    def __init__(self, inputs: Tensor, targets: Tensor) -> None:
        if len(inputs) != len(targets):
            raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets")
        self.inputs = inputs
        self.targets = targets

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.inputs[index], self.targets[index]

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        rows = torch.as_tensor(indices)
        return self.inputs[rows], self.targets[rows]


def already_batched(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """The collate function for :class:`TensorPairDataset`: its batches need no stacking."""
    return batch


class EpochSeededSampler(DistributedSampler):
    """Shuffles ``range(num_examples)`` in an order fixed by ``(seed, epoch)`` alone.

    A default shuffling DataLoader draws from the global RNG, so a run resumed
    from a checkpoint sees a different order than the uninterrupted run. Here
    the order is a pure function of the seed and the epoch, which Lightning sets
    through :meth:`set_epoch` before every training epoch.

    With several processes (``num_replicas`` > 1) each takes every
    ``num_replicas``-th position of that same order, starting at its ``rank``.
    Batch *b* of batch size *B* on the ranks together is then exactly batch *b*
    of one process at batch size ``B * num_replicas``: data-parallel training
    sees the single-process global batches. When ``num_examples`` is not a
    multiple of ``num_replicas``, the order is padded with its own first
    positions so that every rank takes as many steps.

    It is a :class:`~torch.utils.data.DistributedSampler` so that Lightning
    uses it as it is; Lightning wraps any other sampler in one that shuffles
    it again with the global seed. ``num_replicas`` and ``rank`` left as
    ``None`` are read from the default process group when the sampler is
    iterated (one process and rank 0 when there is none).

    Args:
        num_examples: size of the dataset.
        seed: seed of the order.
        num_replicas: processes that share each epoch.
        rank: this process's place among them, from 0.

    Example:
        >>> sampler = EpochSeededSampler(5, seed=0)
        >>> first = list(sampler); sampler.set_epoch(1); second = list(sampler)
        >>> sorted(first) == sorted(second) == [0, 1, 2, 3, 4], first != second
        (True, True)
        >>> sampler.set_epoch(0); list(sampler) == first
        True
        >>> shards = [list(EpochSeededSampler(5, 0, num_replicas=2, rank=r)) for r in (0, 1)]
        >>> shards == [first[0::2], first[1::2] + first[:1]]
        True
    """

    def __init__(
        self, num_examples: int, seed: int, num_replicas: int | None = None, rank: int | None = None
    ) -> None:
        # DistributedSampler.__init__ is not called: it needs a process group to
        # exist now, where this sampler asks for one only when it is iterated.
        self.num_examples = check_int_at_least("num_examples", num_examples, 0)
        self.seed = seed
        self.epoch = 0
        if num_replicas is not None:
            check_int_at_least("num_replicas", num_replicas, 1)
        if rank is not None:
            check_int_at_least("rank", rank, 0)
            if num_replicas is not None and rank >= num_replicas:
                raise InvalidArgumentError("rank", rank, f"an integer in [0, {num_replicas - 1}]")
        self._num_replicas = num_replicas
        self._rank = rank
        # What DistributedSampler's users read: no reshuffling, no dropped examples.
        self.shuffle = False
        self.drop_last = False

    @property
    def num_replicas(self) -> int:
        if self._num_replicas is not None:
            return self._num_replicas
        return dist.get_world_size() if _process_group() else 1

    @property
    def rank(self) -> int:
        if self._rank is not None:
            return self._rank
        return dist.get_rank() if _process_group() else 0

    @property
    def num_samples(self) -> int:
        return math.ceil(self.num_examples / self.num_replicas)

    @property
    def total_size(self) -> int:
        return self.num_samples * self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> list[int]:
        """The epoch's order of all examples, the same on every rank.

        Example:
            >>> EpochSeededSampler(4, seed=1).order()
            [0, 1, 3, 2]
        """
        # Spread (seed, epoch) over the 64-bit seed space so distinct pairs never collide.
        generator = torch.Generator().manual_seed((self.seed << 32) + self.epoch)
        return torch.randperm(self.num_examples, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        order = self.order()
        padding = self.total_size - len(order)
        if order and padding:
            order += (order * math.ceil(padding / len(order)))[:padding]
        return iter(order[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples


def _process_group() -> bool:
    return dist.is_available() and dist.is_initialized()


class ResumableDataLoader(DataLoader):
    """A DataLoader that continues an interrupted pass where a checkpoint left it.

    Lightning saves a training loader's ``state_dict()`` with every checkpoint
    and, when a fit resumes in the middle of an epoch, hands it back through
    ``load_state_dict()`` before iterating again. A plain DataLoader has no such
    state, so Lightning restarts the interrupted epoch from its first batch and
    trains on those batches twice while never seeing the last ones. This loader
    counts the batches it has handed out in the current pass; after
    ``load_state_dict`` the next pass *of the same epoch* skips that many
    batches. They are the ones already trained on when the order of a pass
    depends only on the epoch, as with :class:`EpochSeededSampler`.

    Skipped batches are loaded and dropped, which costs next to nothing for
    in-memory data. The epoch is read from ``sampler.epoch`` (``None`` for a
    sampler without one), so a saved position never spills into another epoch.

    Example:
        >>> data = TensorPairDataset(torch.arange(6.0), torch.arange(6.0))
        >>> loader = ResumableDataLoader(
        ...     data, batch_size=2, sampler=EpochSeededSampler(6, seed=0),
        ...     collate_fn=already_batched,
        ... )
        >>> batches = iter(loader); first = next(batches)
        >>> state = loader.state_dict()
        >>> state
        {'epoch': 0, 'batches': 1}
        >>> resumed = ResumableDataLoader(
        ...     data, batch_size=2, sampler=EpochSeededSampler(6, seed=0),
        ...     collate_fn=already_batched,
        ... )
        >>> resumed.load_state_dict(state)
        >>> [x.tolist() for x, _ in resumed] == [x.tolist() for x, _ in batches]
        True
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._served = 0
        self._epoch: int | None = None
        self._resume: dict[str, Any] | None = None

    def __iter__(self) -> Iterator[Any]:
        # A generator: the body runs at the first batch, after Lightning has set
        # the sampler's epoch (it creates the iterator before it does that).
        epoch = getattr(self.sampler, "epoch", None)
        resume, self._resume = self._resume, None
        skip = resume["batches"] if resume is not None and resume["epoch"] == epoch else 0
        self._epoch, self._served = epoch, 0
        for batch in super().__iter__():
            self._served += 1
            if self._served > skip:
                yield batch

    def state_dict(self) -> dict[str, Any]:
        """The current pass's epoch and the number of batches handed out in it."""
        return {"epoch": self._epoch, "batches": self._served}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Skip ``state_dict["batches"]`` batches in the next pass, if it is of the same epoch."""
        self._resume = {"epoch": state_dict["epoch"], "batches": int(state_dict["batches"])}


class InMemoryDataModule(LightningDataModule, ABC):
    """Shared machinery of the synthetic tasks: generated train, held-out and test sets in memory.

    Subclasses implement :meth:`generate`, drawing ``num_train + num_val``
    examples from the generator they are given (seeded with ``data_seed``);
    this class splits them and draws ``num_test`` more for the test set, with
    :meth:`generate_test` (by default :meth:`generate`) from their own
    generator: seeded with ``test_seed``, or, when that is ``None``, the same
    generator continued after the training and held-out examples, so that the
    test examples never repeat those. After :meth:`setup` the tensors are
    ``X_train``, ``y_train``, ``X_val``, ``y_val``, ``X_test`` and ``y_test``.
    Training batches come in the ``(data_seed, epoch)`` order of
    :class:`EpochSeededSampler`; the held-out set (validation) and the test set
    (``test``) in batches of ``val_batch_size``, by default all at once. The
    training loader is a :class:`ResumableDataLoader`, so a fit resumed in the
    middle of an epoch continues that epoch, and no loader draws from the
    global random generators. Attached to a trainer with a data-parallel
    strategy, each process gets its rank's share of every epoch's order.
    """

    def __init__(
        self,
        num_train: int,
        num_val: int,
        batch_size: int,
        data_seed: int,
        val_batch_size: int | None,
        num_test: int = 100,
        test_seed: int | None = None,
    ) -> None:
        super().__init__()
        self.num_train = check_int_at_least("num_train", num_train, 1)
        self.num_val = check_int_at_least("num_val", num_val, 1)
        self.batch_size = check_int_at_least("batch_size", batch_size, 1)
        self.data_seed = check_int_at_least("data_seed", data_seed, 0)
        if val_batch_size is not None:
            check_int_at_least("val_batch_size", val_batch_size, 1)
        self.val_batch_size = val_batch_size
        self.num_test = check_int_at_least("num_test", num_test, 1)
        if test_seed is not None:
            check_int_at_least("test_seed", test_seed, 0)
            if test_seed == data_seed:
                # The same stream would draw the training examples again as test examples.
                raise InvalidArgumentError(
                    "test_seed", test_seed, f"None or a seed other than data_seed={data_seed}"
                )
        self.test_seed = test_seed
        self.X_train: Tensor | None = None
        self.y_train: Tensor | None = None
        self.X_val: Tensor | None = None
        self.y_val: Tensor | None = None
        self.X_test: Tensor | None = None
        self.y_test: Tensor | None = None

    @abstractmethod
    def generate(self, num_examples: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Draw ``num_examples`` ``(inputs, targets)`` rows from ``generator``."""

    def generate_test(self, num_examples: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Draw the test set's rows; override when the task itself is drawn in :meth:`generate`."""
        return self.generate(num_examples, generator)

    def setup(self, stage: str | None = None) -> None:
        if self.X_train is not None:
            return
        generator = torch.Generator().manual_seed(self.data_seed)
        X, y = self.generate(self.num_train + self.num_val, generator)
        self.X_train, self.X_val = X[: self.num_train], X[self.num_train :]
        self.y_train, self.y_val = y[: self.num_train], y[self.num_train :]
        if self.test_seed is not None:
            generator = torch.Generator().manual_seed(self.test_seed)
        self.X_test, self.y_test = self.generate_test(self.num_test, generator)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        # Under a data-parallel strategy each process takes its share of every
        # epoch's order (the data-parallel ranks only, under model parallelism).
        shard = (self.trainer.distributed_sampler_kwargs if self.trainer else None) or {}
        return ResumableDataLoader(
            TensorPairDataset(self.X_train, self.y_train),
            batch_size=self.batch_size,
            sampler=EpochSeededSampler(
                self.num_train,
                self.data_seed,
                num_replicas=shard.get("num_replicas", 1),
                rank=shard.get("rank", 0),
            ),
            collate_fn=already_batched,
            generator=self._loader_generator(),
        )

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return self._evaluation_dataloader(self.X_val, self.y_val)

    def test_dataloader(self) -> DataLoader:
        self.setup()
        return self._evaluation_dataloader(self.X_test, self.y_test)

    def _evaluation_dataloader(self, inputs: Tensor, targets: Tensor) -> DataLoader:
        return DataLoader(
            TensorPairDataset(inputs, targets),
            batch_size=self.val_batch_size or len(inputs),
            collate_fn=already_batched,
            generator=self._loader_generator(),
        )

    def _loader_generator(self) -> torch.Generator:
        # Without a generator of its own, every pass over a DataLoader draws its
        # worker seed from the global RNG. A model's dropout draws from that RNG
        # too, so a resumed run, which starts passes at other moments, would see
        # other dropout masks. With its own generator, loading never touches it.
        return torch.Generator().manual_seed(self.data_seed)


class SyntheticRegressionDataModule(InMemoryDataModule):
    """The *Dive into Deep Learning* weight-decay task; defaults are the book's values.

    The data are drawn from ``data_seed`` alone, not from the global seed, so
    runs that differ only in λ or in the model's seed train on identical data in
    an identical batch order.

    Args:
        num_train: training examples (the book: 20, fewer than inputs, so it overfits).
        num_val: held-out examples, for validation ("test" in the book).
        num_inputs: input dimension d.
        batch_size: training minibatch size per process; with data-parallel
            processes the global batch is ``batch_size`` × their number.
        w_true: every coordinate of the true weight vector.
        b_true: the true bias.
        noise: standard deviation of the label noise ε.
        data_seed: seed of the data and of the training shuffle order.
        val_batch_size: evaluation batch size; ``None`` evaluates a whole set in one batch.
        num_test: test examples, scored by ``test`` (and never seen by ``fit``).
        test_seed: seed of the test examples; ``None`` draws them after the
            training and held-out examples of ``data_seed``.

    Example:
        >>> data = SyntheticRegressionDataModule()
        >>> data.setup("fit")
        >>> data.X_train.shape, data.y_train.shape, data.X_val.shape, data.X_test.shape
        (torch.Size([20, 200]), torch.Size([20, 1]), torch.Size([100, 200]), torch.Size([100, 200]))
        >>> len(data.train_dataloader())
        4
    """

    def __init__(
        self,
        num_train: int = 20,
        num_val: int = 100,
        num_inputs: int = 200,
        batch_size: int = 5,
        w_true: float = 0.01,
        b_true: float = 0.05,
        noise: float = 0.01,
        data_seed: int = 0,
        val_batch_size: int | None = None,
        num_test: int = 100,
        test_seed: int | None = None,
    ) -> None:
        super().__init__(
            num_train, num_val, batch_size, data_seed, val_batch_size, num_test, test_seed
        )
        self.num_inputs = check_int_at_least("num_inputs", num_inputs, 1)
        self.w_true = check_finite("w_true", w_true)
        self.b_true = check_finite("b_true", b_true)
        self.noise = check_finite_non_negative("noise", noise)
        self.save_hyperparameters()

    def generate(self, num_examples: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return make_linear_data(
            num_examples, self.num_inputs, self.w_true, self.b_true, self.noise, generator
        )


class SyntheticClassificationDataModule(InMemoryDataModule):
    """A small multi-class task for other models than the book's: labels from a linear teacher.

    ``label = argmax(x @ W + noise · N(0, 1))`` with ``x ~ N(0, I)``; ``W`` and
    the data come from ``data_seed`` alone. Batches are ``(inputs, labels)``
    with integer labels, as ``nn.CrossEntropyLoss`` expects.

    Args:
        num_train: training examples.
        num_val: held-out examples.
        num_inputs: input features.
        num_classes: classes, at least 2.
        batch_size: training minibatch size per process; with data-parallel
            processes the global batch is ``batch_size`` × their number.
        noise: standard deviation of the noise added to the teacher's logits.
        data_seed: seed of the data, the teacher and the shuffle order.
        val_batch_size: evaluation batch size; ``None`` evaluates a whole set in one batch.
        num_test: test examples, scored by ``test`` (and never seen by ``fit``).
        test_seed: seed of the test examples (the teacher stays ``data_seed``'s);
            ``None`` draws them after the training and held-out examples.

    Example:
        >>> data = SyntheticClassificationDataModule(num_train=8, num_val=4, num_inputs=3)
        >>> data.setup()
        >>> data.X_train.shape, data.y_train.dtype, int(data.y_train.max()) < 3
        (torch.Size([8, 3]), torch.int64, True)
    """

    def __init__(
        self,
        num_train: int = 512,
        num_val: int = 512,
        num_inputs: int = 20,
        num_classes: int = 3,
        batch_size: int = 64,
        noise: float = 0.5,
        data_seed: int = 0,
        val_batch_size: int | None = None,
        num_test: int = 512,
        test_seed: int | None = None,
    ) -> None:
        super().__init__(
            num_train, num_val, batch_size, data_seed, val_batch_size, num_test, test_seed
        )
        self.num_inputs = check_int_at_least("num_inputs", num_inputs, 1)
        self.num_classes = check_int_at_least("num_classes", num_classes, 2)
        self.noise = check_finite_non_negative("noise", noise)
        self.save_hyperparameters()

    def generate(self, num_examples: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        # The teacher comes first in data_seed's stream, then the examples.
        return self._examples(self._teacher(generator), num_examples, generator)

    def generate_test(self, num_examples: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        # Other examples of the same task: the teacher is always data_seed's.
        teacher = self._teacher(torch.Generator().manual_seed(self.data_seed))
        return self._examples(teacher, num_examples, generator)

    def _teacher(self, generator: torch.Generator) -> Tensor:
        return torch.randn(self.num_inputs, self.num_classes, generator=generator)

    def _examples(
        self, teacher: Tensor, num_examples: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        X = torch.randn(num_examples, self.num_inputs, generator=generator)
        noise = torch.randn(num_examples, self.num_classes, generator=generator)
        return X, (X @ teacher + self.noise * noise).argmax(dim=1)
