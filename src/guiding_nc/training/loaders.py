"""Loaders for the "Guiding Neural Collapse" experiments: datasets and samplers put together.

* :func:`build_loader` — a :class:`torch.utils.data.DataLoader` over any dataset of
  :mod:`guiding_nc.training.datasets` or below, driven by a batch sampler of
  :mod:`guiding_nc.training.samplers`, with DistributedDataParallel support
  (``num_replicas``/``rank``); :func:`dataset_collate_fn` -- the collate function a dataset asks for.
* :func:`balanced_labels`, :class:`IndexDataset`, :func:`ufm_dataset` — labels and a
  dataset of ``(index, label)`` pairs for unconstrained feature models (UFMs), whose
  "input" is the sample index, so they can use the same samplers and loaders;
  :class:`IndexBatch` and :func:`collate_index_batch` collate their batches.
* :class:`SubsetDataset`, :func:`stratified_subset_indices` — the class-balanced subsets the
  trainer takes for ``max_train_samples`` / ``max_test_samples``.

Randomness: DataLoader workers are seeded from a generator seeded with ``seed`` (and ``rank``).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable, Optional

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .datasets import as_long_targets
from .samplers import GlobalBatchSampler, RandomBatchSampler, SequentialBatchSampler, StratifiedBatchSampler

__all__ = [
    "IndexBatch",
    "collate_index_batch",
    "IndexDataset",
    "balanced_labels",
    "ufm_dataset",
    "SubsetDataset",
    "stratified_subset_indices",
    "build_loader",
    "dataset_collate_fn",
]


class IndexBatch(tuple):
    """``(idx, y)`` of one batch, already collated (what :meth:`IndexDataset.__getitems__` returns)."""

    def __new__(cls, idx: Tensor, y: Tensor):
        return super().__new__(cls, (idx, y))

    def __getnewargs__(self):  # pickling (DataLoader workers) rebuilds it from its two tensors
        return tuple(self)


def collate_index_batch(batch: Any):
    """Collate function for :class:`IndexDataset` loaders: an :class:`IndexBatch` is returned as
    the pair of LongTensors ``(idx, y)``; a list of ``(index, label)`` samples is stacked."""
    if isinstance(batch, IndexBatch):
        return batch[0], batch[1]
    return torch.utils.data.default_collate(batch)


class IndexDataset(Dataset):
    """Dataset of ``(index, label)`` pairs for unconstrained feature models.

    A UFM has one free feature vector per sample, so its "input" is the sample index:
    a batch from a DataLoader is ``(idx, y)`` with ``idx`` a LongTensor ``(B,)`` that indexes
    the ``(N, d)`` feature parameter, and ``y`` a LongTensor ``(B,)``.

    Attributes: ``targets`` (LongTensor ``(N,)``), ``num_classes``, ``input_shape = ()``.
    """

    def __init__(self, targets: Any, num_classes: Optional[int] = None):
        self.targets = as_long_targets(targets)
        if self.targets.numel() and self.targets.min() < 0:
            raise ValueError("labels must be non-negative")
        inferred = int(self.targets.max()) + 1 if self.targets.numel() else 0
        self.num_classes = inferred if num_classes is None else int(num_classes)
        if inferred > self.num_classes:
            raise ValueError(f"label {inferred - 1} out of range for num_classes={self.num_classes}")
        self.input_shape: tuple = ()
        self.name = "ufm"

    def __len__(self) -> int:
        return self.targets.shape[0]

    def __getitem__(self, index: int):
        return int(index), int(self.targets[index])

    def __getitems__(self, indices: Sequence[int]) -> "IndexBatch":
        # A full-batch UFM step asks for all N samples: two tensor ops instead of N Python
        # calls and an N-way collate (which cost more than the step's own arithmetic at N=5000).
        idx = torch.as_tensor(indices, dtype=torch.long)
        return IndexBatch(idx, self.targets[idx])

    # DataLoaders over this dataset must pass batches from __getitems__ through unchanged.
    collate_fn = staticmethod(collate_index_batch)

    def __repr__(self) -> str:
        return f"IndexDataset(N={len(self)}, num_classes={self.num_classes})"


def balanced_labels(num_samples: int, num_classes: int) -> Tensor:
    """Labels of a balanced UFM: ``N / C`` samples per class, class-major order.

    Returns LongTensor ``(N,)`` equal to ``arange(N) // (N / C)``, i.e.
    ``[0]*(N/C) + [1]*(N/C) + ...``. The paper's UFMs (N, C) = (1000, 10), (5000, 100),
    (5000, 200), (10000, 1000) are all divisible; we require divisibility (an unbalanced
    UFM would silently change the problem) and raise ``ValueError`` otherwise.
    """
    num_samples, num_classes = int(num_samples), int(num_classes)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if num_samples < num_classes or num_samples % num_classes:
        raise ValueError(f"num_samples={num_samples} must be a positive multiple of num_classes={num_classes} "
                         "so that every class has the same number of samples")
    return torch.arange(num_samples) // (num_samples // num_classes)


def ufm_dataset(num_samples: int, num_classes: int) -> IndexDataset:
    """A balanced UFM dataset: ``(index, label)`` pairs with :func:`balanced_labels`."""
    return IndexDataset(balanced_labels(num_samples, num_classes), num_classes)


class SubsetDataset(torch.utils.data.Dataset):
    """The items ``indices`` of ``base``, with its ``targets``, ``num_classes``, ``input_shape`` and ``name``."""

    def __init__(self, base, indices: Tensor):
        self.base = base
        self.indices = indices.long()
        self.targets = torch.as_tensor(base.targets)[self.indices]
        self.num_classes = base.num_classes
        self.input_shape = getattr(base, "input_shape", ())
        self.name = getattr(base, "name", "")

    def __len__(self) -> int:
        return int(self.indices.numel())

    def __getitem__(self, i: int):
        return self.base[int(self.indices[i])]


def stratified_subset_indices(targets: Tensor, k: int) -> Tensor:
    """Deterministic class-balanced subset of about ``k`` indices (first ones of each class)."""
    targets = torch.as_tensor(targets).long()
    N = targets.numel()
    if k >= N:
        return torch.arange(N)
    classes = torch.unique(targets)
    per = max(1, k // len(classes))
    keep = [torch.nonzero(targets == c).flatten()[:per] for c in classes]
    return torch.sort(torch.cat(keep)).values


def _dataset_targets(dataset: Dataset) -> Tensor:
    targets = getattr(dataset, "targets", None)
    if targets is None:
        raise ValueError("the dataset needs a `targets` attribute (labels, shape (N,)) for the batch samplers; "
                         "use guiding_nc.training.datasets.build_dataset, IndexDataset or LabelledDataset")
    return as_long_targets(targets)


def build_loader(dataset: Dataset, batch_size: int, *, stratified: bool = True, seed: int = 0,
                 num_workers: int = 0, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 drop_last: bool = False, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over ``dataset`` driven by one of this module's batch samplers.

    * ``shuffle=True, stratified=True``: :class:`StratifiedBatchSampler` (training, §3.5).
    * ``shuffle=True, stratified=False``: :class:`RandomBatchSampler` (training baseline).
    * ``shuffle=False``: :class:`SequentialBatchSampler` (evaluation; ``stratified`` is ignored).

    ``batch_size`` is the global batch; each of the ``num_replicas`` ranks receives
    ``batch_size // num_replicas`` samples per step. Batches are ``(x, y)`` with ``x`` of shape
    ``(B, *dataset.input_shape)`` and ``y`` a LongTensor ``(B,)``. Call
    ``loader.batch_sampler.set_epoch(epoch)`` at the start of every training epoch.

    The dataset must have ``targets``; ``num_classes`` is taken from ``dataset.num_classes`` when present.
    """
    targets = _dataset_targets(dataset)
    num_classes = getattr(dataset, "num_classes", None)
    common: dict[str, Any] = dict(num_classes=num_classes, seed=seed, drop_last=drop_last,
                                  num_replicas=num_replicas, rank=rank)
    if not shuffle:
        sampler: GlobalBatchSampler = SequentialBatchSampler(targets, batch_size, **common)
    elif stratified:
        sampler = StratifiedBatchSampler(targets, batch_size, **common)
    else:
        sampler = RandomBatchSampler(targets, batch_size, **common)
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    generator = torch.Generator().manual_seed(int(seed) * 1000003 + int(rank))
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
                      generator=generator, persistent_workers=False, collate_fn=dataset_collate_fn(dataset))


def dataset_collate_fn(dataset: Any) -> Optional[Callable]:
    """The collate function a dataset asks for (its ``collate_fn`` attribute), else ``None``
    (PyTorch's default)."""
    return getattr(dataset, "collate_fn", None)
