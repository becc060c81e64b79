"""The data loaders, with CIFAR and SVHN files written here in torchvision's formats."""
import pickle

import numpy as np
import pytest
import scipy.io
import torch

from raysearch import data


def write_cifar10(root, n=20):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             b"labels": [int(v) for v in rng.integers(0, 10, n)]}
        with open(folder / name, "wb") as fh:
            pickle.dump(d, fh)


def write_cifar100(root, n=30):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in ("train", "test"):
        d = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             b"fine_labels": [int(v) for v in rng.integers(0, 100, n)],
             b"coarse_labels": [0] * n}
        with open(folder / name, "wb") as fh:
            pickle.dump(d, fh)


def write_svhn(root, n=25):
    rng = np.random.default_rng(2)
    for split in ("train", "test"):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, (n, 1))  # SVHN stores the digit 0 as label 10
        scipy.io.savemat(str(root / f"{split}_32x32.mat"), {"X": x, "y": y})


def test_digits_splits_are_disjoint_and_fixed(digits):
    again = data.load("digits")
    assert (len(digits.train), len(digits.val), len(digits.test)) == (1257, 180, 360)
    assert torch.equal(digits.val.x, again.val.x) and torch.equal(digits.test.y, again.test.y)
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797  # every image in exactly one split
    assert digits.train.images().min() >= 0 and digits.train.images().max() == 1


def test_digits_are_scikit_learns_digits(digits):
    """Read from scikit-learn's file without importing it: the same images and labels."""
    from sklearn.datasets import load_digits

    ref = load_digits()
    x = torch.cat([digits.train.x, digits.val.x, digits.test.x]).flatten(1).numpy()
    y = torch.cat([digits.train.y, digits.val.y, digits.test.y]).numpy()
    order = np.lexsort(np.c_[x, y].T)
    ref_x = ref.images.reshape(len(ref.target), -1)
    ref_order = np.lexsort(np.c_[ref_x, ref.target].T)
    assert np.array_equal(x[order], ref_x[ref_order]) and np.array_equal(y[order], ref.target[ref_order])
    assert digits.train.scale == 16.0 and digits.test.images().max() == 1.0


def test_cifar10_from_files_in_torchvision_format(tmp_path):
    write_cifar10(tmp_path, n=220)
    d = data.load("cifar10", tmp_path)
    assert d.train.x.shape[1:] == (3, 32, 32) and d.train.x.dtype == torch.uint8
    assert len(d.train) + len(d.val) == 5 * 220 and len(d.test) == 220
    assert d.spec.classes == 10 and d.augment and d.flip


def test_cifar100_and_svhn(tmp_path):
    write_cifar100(tmp_path, n=1100)
    d = data.load("cifar100", tmp_path)
    assert d.spec.classes == 100 and int(d.train.y.max()) < 100
    write_svhn(tmp_path, n=1100)
    s = data.load("svhn", tmp_path)
    assert s.train.x.shape[1:] == (3, 32, 32)
    assert int(s.train.y.min()) >= 0 and int(s.train.y.max()) <= 9 and not s.flip


def test_missing_data_says_where_to_put_it(tmp_path):
    with pytest.raises(data.DataError, match="--download"):
        data.load("cifar10", tmp_path)
    with pytest.raises(data.DataError, match="--download"):
        data.load("svhn", tmp_path)


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_crafted_pickle_is_refused(tmp_path):
    write_cifar10(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "wb") as fh:
        pickle.dump({b"data": _Evil(), b"labels": []}, fh)
    with pytest.raises(data.DataError, match="refusing"):
        data.load("cifar10", tmp_path)


def test_augment_keeps_shape_and_range():
    x = torch.rand(16, 3, 32, 32)
    out = data.augment_batch(x, flip=True)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, x)
