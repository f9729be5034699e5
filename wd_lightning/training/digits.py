"""Real data without a download: scikit-learn's 8×8 handwritten digits as a LightningDataModule.

scikit-learn ships the 1,797 images of its ``load_digits`` inside the package
(a copy of the UCI "optical recognition of handwritten digits" test set), so
this example runs offline. It needs scikit-learn, an optional extra:
``pip install "wd-lightning[digits]"``.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from wd_lightning.core.errors import InvalidArgumentError, check_int_at_least
from wd_lightning.training.data import InMemoryDataModule, TensorPairDataset, already_batched

__all__ = ["DIGITS_EXAMPLES", "DigitsDataModule", "stratified_order"]

#: Images in scikit-learn's digits data set.
DIGITS_EXAMPLES = 1797
_INSTALL = 'scikit-learn installed (pip install "wd-lightning[digits]"), which ships the digits'


def stratified_order(labels: Tensor, generator: torch.Generator) -> Tensor:
    """A random order of ``range(len(labels))`` that deals the classes out in turn.

    Each class is shuffled, then the order takes one example of every class,
    then a second of every class, and so on (a class that runs out drops out).
    Any prefix of it is as balanced as a prefix can be: the first 100 indices
    of a ten-class set hold 10 examples of each class.

    Example:
        >>> labels = torch.tensor([0, 0, 0, 1, 1, 2])
        >>> order = stratified_order(labels, torch.Generator().manual_seed(0))
        >>> labels[order].tolist()
        [0, 1, 2, 0, 1, 0]
        >>> sorted(order.tolist())
        [0, 1, 2, 3, 4, 5]
    """
    per_class = []
    for label in labels.unique(sorted=True):
        members = (labels == label).nonzero().flatten()
        per_class.append(members[torch.randperm(len(members), generator=generator)].tolist())
    order = [
        members[turn]
        for turn in range(max(len(members) for members in per_class))
        for members in per_class
        if turn < len(members)
    ]
    return torch.tensor(order, dtype=torch.long)


class DigitsDataModule(InMemoryDataModule):
    """scikit-learn's handwritten digits: a small training subset, validation and test splits.

    Images are ``(1, 8, 8)`` float tensors with the pixel counts 0–16 scaled to
    [0, 1]; targets are class indices 0–9, as ``nn.CrossEntropyLoss`` expects.
    The splits are disjoint and class-balanced (see :func:`stratified_order`):
    the first ``num_train`` images of a random order that deals the ten classes
    out in turn train the model, the next ``num_val`` validate it, the next
    ``num_test`` test it. The order, like the training shuffle, comes from
    ``data_seed`` alone, so runs that differ in λ or in the model's seed see the
    same images in the same batches.

    Args:
        num_train: training images; a small subset (the default 100 is 10
            per class) is where weight decay matters.
        num_val: validation images (``val/*`` metrics, the sweep's held-out loss).
        num_test: test images, for ``test`` only; ``num_train + num_val +
            num_test`` must not exceed the 1,797 images.
        batch_size: training minibatch size per process.
        data_seed: seed of the split and of the training shuffle order.
        val_batch_size: validation and test batch size; ``None`` for one batch.

    Raises:
        InvalidArgumentError: a bad size, or scikit-learn is not installed.
    """

    def __init__(
        self,
        num_train: int = 100,
        num_val: int = 500,
        num_test: int = 500,
        batch_size: int = 25,
        data_seed: int = 0,
        val_batch_size: int | None = None,
    ) -> None:
        super().__init__(num_train, num_val, batch_size, data_seed, val_batch_size)
        self.num_test = check_int_at_least("num_test", num_test, 1)
        total = self.num_train + self.num_val + self.num_test
        if total > DIGITS_EXAMPLES:
            raise InvalidArgumentError(
                "num_train + num_val + num_test",
                total,
                f"at most {DIGITS_EXAMPLES}, the number of images in the data set",
            )
        # Checked now, so a fit fails before it creates a run directory.
        if importlib.util.find_spec("sklearn") is None:
            raise InvalidArgumentError("data", type(self).__name__, _INSTALL)
        self.X_test: Tensor | None = None
        self.y_test: Tensor | None = None
        self.save_hyperparameters()

    def generate(self, num_examples: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """The first ``num_examples`` images and labels of the data set's stratified order."""
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        labels = torch.as_tensor(digits.target, dtype=torch.long)
        order = stratified_order(labels, generator)[:num_examples]
        return images[order], labels[order]

    def setup(self, stage: str | None = None) -> None:
        if self.X_train is not None:
            return
        generator = torch.Generator().manual_seed(self.data_seed)
        X, y = self.generate(self.num_train + self.num_val + self.num_test, generator)
        val_end = self.num_train + self.num_val
        self.X_train, self.y_train = X[: self.num_train], y[: self.num_train]
        self.X_val, self.y_val = X[self.num_train : val_end], y[self.num_train : val_end]
        self.X_test, self.y_test = X[val_end:], y[val_end:]

    def test_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(
            TensorPairDataset(self.X_test, self.y_test),
            batch_size=self.val_batch_size or self.num_test,
            collate_fn=already_batched,
            generator=self._loader_generator(),
        )
