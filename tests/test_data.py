"""Tests for guiding_nc.training.datasets, .samplers and .loaders: offline datasets, missing-dataset errors, batch samplers, loaders."""
from __future__ import annotations

import gzip
import hashlib
import math
import random
import struct
import urllib.error

import numpy as np
import pytest
import torch

from guiding_nc.training import datasets as D
from guiding_nc.training.datasets import (
    DATASET_NAMES,
    DatasetNotFoundError,
    RandomShiftRotate,
    build_dataset,
    stratified_split,
)
from guiding_nc.training.loaders import IndexDataset, balanced_labels, build_loader, ufm_dataset
from guiding_nc.training.samplers import RandomBatchSampler, SequentialBatchSampler, StratifiedBatchSampler

OFFLINE = [
    # name, train, N, input_shape, per-class counts (None: not exactly balanced)
    ("mnist5k", True, 4000, (1, 28, 28), [400] * 10),
    ("mnist5k", False, 1000, (1, 28, 28), [100] * 10),
    ("digits", True, 1438, (1, 8, 8), None),
    ("digits", False, 359, (1, 8, 8), None),
    ("mnist1d", True, 4000, (40,), None),
    ("mnist1d", False, 1000, (40,), None),
]


def _epoch(sampler, epoch=0):
    sampler.set_epoch(epoch)
    return [list(b) for b in sampler]


# --------------------------------------------------------------------------------------
# Offline datasets
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,train,n,shape,counts", OFFLINE)
def test_offline_dataset_sizes_shapes_dtypes(name, train, n, shape, counts):
    ds = build_dataset(name, train=train, augment=False)
    assert len(ds) == n
    assert ds.num_classes == 10
    assert ds.input_shape == shape
    assert ds.targets.dtype == torch.long and ds.targets.shape == (n,)
    assert set(ds.targets.tolist()) == set(range(10))
    x, y = ds[0]
    assert x.dtype == torch.float32 and tuple(x.shape) == shape
    assert isinstance(y, int) and y == int(ds.targets[0])
    if counts is not None:
        assert torch.bincount(ds.targets, minlength=10).tolist() == counts


@pytest.mark.parametrize("name", ["mnist5k", "digits", "mnist1d"])
def test_offline_training_set_is_standardised(name):
    ds = build_dataset(name, train=True, augment=False)
    x = torch.stack([ds[i][0] for i in range(len(ds))]).double()
    per_channel = x.transpose(0, 1).reshape(x.shape[1], -1) if x.ndim == 4 else x.reshape(1, -1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(per_channel.shape[0], dtype=torch.double), atol=1e-4)
    assert torch.allclose(per_channel.std(1, unbiased=False), torch.ones(per_channel.shape[0], dtype=torch.double),
                          atol=1e-4)
    assert torch.isfinite(x).all()


def test_digits_split_is_stratified_disjoint_and_deterministic():
    from sklearn.datasets import load_digits

    y = load_digits().target
    train, test = stratified_split(y, 0.2, seed=0)
    assert len(set(train.tolist()) & set(test.tolist())) == 0
    assert sorted(train.tolist() + test.tolist()) == list(range(len(y)))
    counts = np.bincount(y, minlength=10)
    assert np.bincount(y[test.numpy()], minlength=10).tolist() == [int(round(0.2 * c)) for c in counts]
    again_train, again_test = stratified_split(y, 0.2, seed=0)
    assert torch.equal(train, again_train) and torch.equal(test, again_test)
    assert not torch.equal(test, stratified_split(y, 0.2, seed=1)[1])
    tr, te = build_dataset("digits", train=True, augment=False), build_dataset("digits", train=False)
    assert torch.equal(tr.targets, torch.from_numpy(y[train.numpy()]))
    assert torch.equal(te.targets, torch.from_numpy(y[test.numpy()]))


def test_mnist5k_split_is_disjoint_and_deterministic():
    def hashes(ds):
        return [hashlib.sha1(ds.raw[i].numpy().tobytes()).hexdigest() for i in range(len(ds))]

    tr, te = build_dataset("mnist5k", train=True), build_dataset("mnist5k", train=False)
    htr, hte = hashes(tr), hashes(te)
    assert len(set(htr)) == len(htr) and len(set(hte)) == len(hte)  # no duplicate images in the sample
    assert not set(htr) & set(hte)
    assert hashes(build_dataset("mnist5k", train=False)) == hte
    assert hashes(build_dataset("mnist5k", train=False, seed=1)) != hte
    assert torch.equal(build_dataset("mnist5k", train=True, seed=1).targets.bincount(), tr.targets.bincount())


def test_mnist1d_generation_touches_no_global_rng_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    D._load_mnist1d.cache_clear()
    random.seed(123)
    np.random.seed(123)
    expected_py, expected_np = random.random(), np.random.rand()
    random.seed(123)
    np.random.seed(123)
    train = build_dataset("mnist1d", train=True)
    assert (random.random(), np.random.rand()) == (expected_py, expected_np)
    assert list(tmp_path.iterdir()) == []
    assert torch.equal(build_dataset("mnist1d", train=True)[5][0], train[5][0])  # cached, deterministic


def test_offline_augmentation_keeps_shape_and_is_random():
    plain = build_dataset("mnist5k", train=True, augment=False)
    aug = build_dataset("mnist5k", train=True, augment=True)
    torch.manual_seed(0)
    a = torch.stack([aug[i][0] for i in range(64)])
    torch.manual_seed(0)
    b = torch.stack([aug[i][0] for i in range(64)])
    p = torch.stack([plain[i][0] for i in range(64)])
    assert a.shape == p.shape == (64, 1, 28, 28)
    assert torch.equal(a, b)
    assert not torch.allclose(a, p)
    assert torch.equal(aug.targets, plain.targets)
    assert build_dataset("mnist5k", train=False, augment=True).augment is None  # no augmentation at test time
    assert build_dataset("mnist1d", train=True, augment=True).augment is None


def test_random_shift_rotate_matches_torchvision():
    import torchvision.transforms.functional as F
    from torchvision.transforms import InterpolationMode

    torch.manual_seed(0)
    img = torch.rand(1, 28, 28)
    identity = RandomShiftRotate((28, 28), 0, 0)
    assert torch.equal(identity(img), img)
    rot = RandomShiftRotate((28, 28), 0, 10)
    for k, angle in ((0, -10), (20, 10), (10, 0)):  # map k is angle k - 10 in the other sign convention
        ours = (img.reshape(1, -1)[:, rot._idx[k]] * rot._w[k]).sum(1).reshape(1, 28, 28)
        ref = F.rotate(img, -angle, interpolation=InterpolationMode.BILINEAR)
        assert (ours - ref)[:, 2:-2, 2:-2].abs().max() < 1e-4
    shift = RandomShiftRotate((28, 28), 2, 0)
    out = shift(img)
    matches = [torch.equal(out, torch.nn.functional.pad(img, (2, 2, 2, 2))[:, dy:dy + 28, dx:dx + 28])
               for dy in range(5) for dx in range(5)]
    assert sum(matches) >= 1
    with pytest.raises(ValueError, match="shape"):
        shift(torch.rand(1, 8, 8))


# --------------------------------------------------------------------------------------
# torchvision datasets: missing files, and the wrapper on tiny fake files
# --------------------------------------------------------------------------------------
def test_unknown_dataset_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        build_dataset("svhn")
    assert all(name in str(info.value) for name in DATASET_NAMES)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "stl10", "mnist"])
def test_missing_downloadable_dataset_raises_clear_error(tmp_path, name):
    with pytest.raises(DatasetNotFoundError) as info:
        build_dataset(name, root=tmp_path / "raw", download=False)
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert str(tmp_path / "raw") in msg and name in msg
    assert "download=True" in msg and "--download" in msg
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no torchvision traceback


@pytest.mark.parametrize("train,split", [(True, "train"), (False, "val")])
def test_missing_imagenet_raises_clear_error(tmp_path, train, split):
    with pytest.raises(DatasetNotFoundError) as info:
        build_dataset("imagenet", root=tmp_path, train=train)
    msg = str(info.value)
    assert str(tmp_path / "imagenet" / split) in msg
    assert "--download" in msg and "image-net.org" in msg


def test_failed_download_raises_clear_error(tmp_path, monkeypatch):
    import torchvision

    def offline(self):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", offline)
    with pytest.raises(DatasetNotFoundError) as info:
        build_dataset("cifar10", root=tmp_path, download=True)
    assert "download=True" in str(info.value) and "no network" in str(info.value)


def test_imagenet_folder_layout_on_fake_images(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for wnid in ("n01440764", "n01443537"):
            folder = tmp_path / "imagenet" / split / wnid
            folder.mkdir(parents=True)
            for k in range(3):
                pixels = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{wnid}_{k}.JPEG", format="JPEG")
    for train in (True, False):
        ds = build_dataset("imagenet", root=tmp_path, train=train)
        assert len(ds) == 6 and ds.num_classes == 2 and ds.input_shape == (3, 224, 224)
        assert ds.targets.tolist() == [0, 0, 0, 1, 1, 1]
        x, y = ds[4]
        assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and y == 1


def _write_idx(path, array, magic):
    with gzip.open(path, "wb") if path.suffix == ".gz" else open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", s) for s in array.shape) + array.tobytes())


def test_mnist_wrapper_on_fake_idx_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 20), ("t10k", 8)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), 2051)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8), 2049)
    ds = build_dataset("mnist", root=tmp_path, train=True)
    assert len(ds) == 20 and ds.num_classes == 10 and ds.input_shape == (1, 28, 28)
    assert ds.targets.dtype == torch.long and ds.targets.tolist() == [i % 10 for i in range(20)]
    x, y = ds[3]
    assert x.shape == (1, 28, 28) and y == 3
    test = build_dataset("mnist", root=tmp_path, train=False)
    x, _ = test[0]
    assert len(test) == 8 and x.shape == (1, 28, 28)


# --------------------------------------------------------------------------------------
# StratifiedBatchSampler
# --------------------------------------------------------------------------------------
def _balanced(C, per_class, seed=0):
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(C), per_class))


def test_stratified_every_batch_has_every_class_and_covers_epoch():
    labels = _balanced(10, 50)  # N = 500
    s = StratifiedBatchSampler(labels, 32, seed=3)
    for epoch in range(3):
        batches = _epoch(s, epoch)
        assert len(batches) == len(s) == math.ceil(500 / 32)
        for b in batches:
            assert len(b) == 32
            assert set(labels[b].tolist()) == set(range(10))
        counts = np.bincount(np.concatenate(batches), minlength=500)
        assert counts.min() >= 1 and counts.max() <= 2  # each index at least once, at most twice
        assert counts.sum() == 32 * len(s)


def test_stratified_batch_equal_to_num_classes():
    labels = _balanced(10, 7)
    batches = _epoch(StratifiedBatchSampler(labels, 10))
    assert len(batches) == 7
    assert all(sorted(labels[b].tolist()) == list(range(10)) for b in batches)
    assert sorted(np.concatenate(batches).tolist()) == list(range(70))  # exactly once each


def test_stratified_imbalanced_labels():
    labels = np.concatenate([np.full(200, 0), np.full(30, 1), np.full(5, 2), np.full(1, 3)])
    s = StratifiedBatchSampler(labels, 16, seed=1)
    # ceil(236/16) = 15 batches are not enough to fit every sample plus one of each class per batch:
    # B must satisfy sum_c max(n_c, B) <= 16 B, i.e. B = 17.
    assert len(s) == 17
    batches = _epoch(s)
    assert all(len(b) == 16 and set(labels[b].tolist()) == {0, 1, 2, 3} for b in batches)
    assert np.bincount(np.concatenate(batches), minlength=236).min() >= 1


def test_stratified_drop_last_visits_each_index_at_most_once():
    labels = _balanced(10, 50)
    s = StratifiedBatchSampler(labels, 32, drop_last=True, seed=5)
    batches = _epoch(s)
    assert len(batches) == len(s) == 500 // 32
    assert all(len(b) == 32 and set(labels[b].tolist()) == set(range(10)) for b in batches)
    flat = np.concatenate(batches)
    assert len(np.unique(flat)) == len(flat)


def test_stratified_more_classes_than_batch_cycles_through_classes():
    C, b = 25, 8
    labels = _balanced(C, 20)  # N = 500
    s = StratifiedBatchSampler(labels, b, seed=7)
    K = math.ceil(C / b)
    for epoch in range(2):
        batches = _epoch(s, epoch)
        assert len(batches) == math.ceil(500 / b)
        classes = [set(labels[batch].tolist()) for batch in batches]
        assert all(len(batch) == b and len(cls) == b for batch, cls in zip(batches, classes))  # b distinct classes
        for start in range(len(batches) - K + 1):  # every window of ceil(C/b) batches has every class
            assert set().union(*classes[start:start + K]) == set(range(C))
        for c in range(C):  # so no class is missing from K batches in a row
            seen = [j for j, cls in enumerate(classes) if c in cls]
            assert seen[0] < K and max(np.diff(seen)) <= K and len(batches) - 1 - seen[-1] < K
        assert np.bincount(np.concatenate(batches), minlength=500).min() >= 1  # balanced: all indices visited


def test_stratified_deterministic_per_seed_and_epoch():
    labels = _balanced(10, 30)
    a, b = StratifiedBatchSampler(labels, 20, seed=11), StratifiedBatchSampler(labels, 20, seed=11)
    assert _epoch(a, 0) == _epoch(b, 0)
    assert _epoch(a, 4) == _epoch(b, 4)
    assert _epoch(a, 0) != _epoch(a, 1)
    assert _epoch(a, 1) == _epoch(b, 1)
    assert [list(x) for x in a] == [list(x) for x in a]  # no hidden state between iterations
    assert _epoch(a, 0) != _epoch(StratifiedBatchSampler(labels, 20, seed=12), 0)
    small = _balanced(30, 10)
    assert _epoch(StratifiedBatchSampler(small, 8, seed=2), 3) == _epoch(StratifiedBatchSampler(small, 8, seed=2), 3)


@pytest.mark.parametrize("cls", [StratifiedBatchSampler, RandomBatchSampler, SequentialBatchSampler])
@pytest.mark.parametrize("batch_size,C", [(32, 10), (8, 25)])
def test_replica_slices_concatenate_to_the_global_batch(cls, batch_size, C):
    labels = _balanced(C, 20)
    single = _epoch(cls(labels, batch_size, seed=4), 3)
    for R in (2, 4):
        ranks = [_epoch(cls(labels, batch_size, seed=4, num_replicas=R, rank=r), 3) for r in range(R)]
        assert all(len(batches) == len(single) for batches in ranks)
        for j, global_batch in enumerate(single):
            parts = [ranks[r][j] for r in range(R)]
            if cls is not SequentialBatchSampler or len(global_batch) == batch_size:
                assert all(len(p) == batch_size // R for p in parts)
            assert sum(parts, []) == global_batch


def test_sampler_argument_errors():
    labels = _balanced(10, 10)
    with pytest.raises(ValueError, match="batch_size"):
        StratifiedBatchSampler(labels, 0)
    with pytest.raises(ValueError, match="divisible by num_replicas"):
        StratifiedBatchSampler(labels, 30, num_replicas=4)
    with pytest.raises(ValueError, match="divisible by num_replicas"):
        RandomBatchSampler(labels, 30, num_replicas=4)
    with pytest.raises(ValueError, match="rank"):
        StratifiedBatchSampler(labels, 32, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="num_replicas"):
        StratifiedBatchSampler(labels, 32, num_replicas=0)
    with pytest.raises(ValueError, match=r"classes \[10, 11\]"):
        StratifiedBatchSampler(labels, 32, num_classes=12)
    with pytest.raises(ValueError, match="out of range"):
        StratifiedBatchSampler(labels, 32, num_classes=5)
    with pytest.raises(ValueError, match="non-negative"):
        StratifiedBatchSampler(np.array([0, 1, -1]), 2)
    with pytest.raises(ValueError, match="integers"):
        StratifiedBatchSampler(np.array([0.0, 1.0]), 2)
    with pytest.raises(ValueError, match="one-dimensional"):
        StratifiedBatchSampler(np.zeros((4, 2), dtype=int), 2)
    with pytest.raises(ValueError, match="empty"):
        StratifiedBatchSampler(np.zeros(0, dtype=int), 2)


# --------------------------------------------------------------------------------------
# RandomBatchSampler and SequentialBatchSampler
# --------------------------------------------------------------------------------------
def test_random_batch_sampler_full_batches_cover_epoch():
    s = RandomBatchSampler(100, 32, seed=0)
    batches = _epoch(s)
    assert len(batches) == len(s) == 4 and all(len(b) == 32 for b in batches)
    counts = np.bincount(np.concatenate(batches), minlength=100)
    assert counts.min() == 1 and counts.max() == 2
    assert _epoch(s, 1) != batches and _epoch(s, 0) == batches
    dropped = _epoch(RandomBatchSampler(100, 32, drop_last=True))
    assert len(dropped) == 3 and len(set(np.concatenate(dropped).tolist())) == 96
    assert len(RandomBatchSampler(torch.zeros(100, dtype=torch.long), 32)) == 4


def test_sequential_batch_sampler():
    batches = list(SequentialBatchSampler(10, 4))
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    ranks = [list(SequentialBatchSampler(10, 4, num_replicas=2, rank=r)) for r in range(2)]
    assert sorted(sum(ranks[0] + ranks[1], [])) == list(range(10))


# --------------------------------------------------------------------------------------
# UFM labels and datasets
# --------------------------------------------------------------------------------------
def test_balanced_labels_and_ufm_dataset():
    y = balanced_labels(1000, 10)
    assert y.dtype == torch.long and y.shape == (1000,)
    assert torch.bincount(y).tolist() == [100] * 10
    assert torch.equal(y[:100], torch.zeros(100, dtype=torch.long))  # class-major order
    with pytest.raises(ValueError, match="multiple"):
        balanced_labels(1001, 10)
    with pytest.raises(ValueError, match="multiple"):
        balanced_labels(5, 10)
    with pytest.raises(ValueError, match="num_classes"):
        balanced_labels(10, 0)
    ds = ufm_dataset(5000, 200)
    assert len(ds) == 5000 and ds.num_classes == 200 and ds.input_shape == ()
    assert ds[4999] == (4999, 199)
    with pytest.raises(ValueError, match="out of range"):
        IndexDataset([0, 1, 5], num_classes=3)


# --------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------
def test_loader_yields_stratified_image_batches():
    ds = build_dataset("digits", train=True, augment=True)
    loader = build_loader(ds, 64, seed=0)
    loader.batch_sampler.set_epoch(2)
    batches = list(loader)
    assert len(batches) == len(loader) == math.ceil(len(ds) / 64)
    for x, y in batches:
        assert x.shape == (64, 1, 8, 8) and x.dtype == torch.float32
        assert y.shape == (64,) and y.dtype == torch.long
        assert set(y.tolist()) == set(range(10))
    plain = build_loader(ds, 64, stratified=False)
    assert isinstance(plain.batch_sampler, RandomBatchSampler)
    x, y = next(iter(plain))
    assert x.shape == (64, 1, 8, 8)


def test_loader_evaluation_is_sequential():
    ds = build_dataset("mnist1d", train=False)
    loader = build_loader(ds, 256, shuffle=False)
    ys = [y for _, y in loader]
    assert [len(y) for y in ys] == [256, 256, 256, 232]
    assert torch.equal(torch.cat(ys), ds.targets)
    x, _ = next(iter(loader))
    assert x.shape == (256, 40)


def test_loader_distributed_slices():
    ds = build_dataset("mnist5k", train=False, augment=False)
    full = [y for _, y in build_loader(ds, 40, seed=9)]
    halves = [[y for _, y in build_loader(ds, 40, seed=9, num_replicas=2, rank=r)] for r in range(2)]
    for j, y in enumerate(full):
        assert halves[0][j].shape == (20,)
        assert torch.equal(torch.cat([halves[0][j], halves[1][j]]), y)


def test_ufm_loader_yields_indices_and_labels():
    ds = ufm_dataset(1000, 10)
    loader = build_loader(ds, 128, seed=1)
    idx, y = next(iter(loader))
    assert idx.dtype == torch.long and idx.shape == (128,)
    assert torch.equal(y, ds.targets[idx])
    assert set(y.tolist()) == set(range(10))
    # More classes than the batch (UFM-200 with batch 128): cycles through the classes.
    big = build_loader(ufm_dataset(5000, 200), 128, seed=1)
    seen = [set(y.tolist()) for _, y in big]
    assert set().union(*seen[:2]) == set(range(200))


def test_ufm_loader_fetches_whole_batches_without_per_sample_calls(monkeypatch):
    # A full-batch UFM step fetches all N samples through __getitems__ in one call; the batches
    # are exactly those of the per-sample path (same indices, same labels, same order).
    ds = ufm_dataset(1000, 10)
    fast = [b for b in build_loader(ds, 256, seed=3)]
    calls = []
    monkeypatch.setattr(IndexDataset, "__getitem__", lambda self, i: calls.append(i) or (int(i), int(self.targets[i])))
    assert calls == [] and len(fast) == 4
    monkeypatch.setattr(IndexDataset, "__getitems__", None)  # PyTorch's sign to use __getitem__
    slow = [b for b in build_loader(ds, 256, seed=3)]
    assert len(calls) == sum(len(i) for i, _ in fast)
    for (i1, y1), (i2, y2) in zip(fast, slow):
        assert i1.dtype == i2.dtype == torch.long and torch.equal(i1, i2) and torch.equal(y1, y2)
    import pickle

    from guiding_nc.training.loaders import IndexBatch

    b = pickle.loads(pickle.dumps(IndexBatch(torch.arange(3), torch.zeros(3, dtype=torch.long))))
    assert isinstance(b, IndexBatch) and torch.equal(b[0], torch.arange(3))
    monkeypatch.undo()
    workers = [b for b in build_loader(ds, 256, seed=3, num_workers=1)]
    assert all(torch.equal(a[0], w[0]) and torch.equal(a[1], w[1]) for a, w in zip(fast, workers))
    # A sequential (evaluation) loader over the same dataset also gets whole batches.
    idx, y = next(iter(build_loader(ds, 1000, shuffle=False)))
    assert torch.equal(idx, torch.arange(1000)) and torch.equal(y, ds.targets)


def test_loader_requires_targets():
    with pytest.raises(ValueError, match="targets"):
        build_loader(torch.utils.data.TensorDataset(torch.zeros(4, 2)), 2)
