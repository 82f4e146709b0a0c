"""Batch samplers for the "Guiding Neural Collapse" experiments.

* :class:`StratifiedBatchSampler` — every class in every batch (paper §3.5), or, when
  there are more classes than batch slots, a class cycle so that every class is seen every
  ``ceil(C / batch_size)`` batches. :class:`RandomBatchSampler` is the plain shuffled
  counterpart with the same interface, so methods can be compared with and without
  stratification (the public code release used stratification only for the implicit
  method, a confound we avoid). :class:`SequentialBatchSampler` is for evaluation.
  :class:`GlobalBatchSampler` is their base class (epoch seeding, slicing the global batch
  across DistributedDataParallel replicas).
* :class:`EvalShardSampler` — the trainer's evaluation batches over this rank's shard.

Randomness: the samplers use their own NumPy generators seeded from ``(seed, epoch)``.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Optional

import numpy as np
from torch import Tensor
from torch.utils.data import Sampler

__all__ = [
    "GlobalBatchSampler",
    "StratifiedBatchSampler",
    "RandomBatchSampler",
    "SequentialBatchSampler",
    "EvalShardSampler",
]


class GlobalBatchSampler(Sampler[list[int]]):
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


class StratifiedBatchSampler(GlobalBatchSampler):
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


class _UnstratifiedBatchSampler(GlobalBatchSampler):
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


class EvalShardSampler(Sampler):
    """Evaluation batches over this rank's contiguous shard ``[r N / R, (r+1) N / R)``.

    Every sample is evaluated exactly once over all ranks and no rank ever gets an empty
    batch (ranks may get different numbers of batches; evaluation has no collectives inside
    its loops).
    """

    def __init__(self, num_samples: int, batch_size: int, rank: int = 0, world_size: int = 1):
        self.start = rank * num_samples // world_size
        self.end = (rank + 1) * num_samples // world_size
        self.batch_size = int(batch_size)

    def __iter__(self):
        for i in range(self.start, self.end, self.batch_size):
            yield list(range(i, min(i + self.batch_size, self.end)))

    def __len__(self) -> int:
        return -(-(self.end - self.start) // self.batch_size)
