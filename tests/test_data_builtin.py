"""The built-in data sets' readers (raysearch.data.builtin), with CIFAR, SVHN and MNIST files
written here in torchvision's formats: nothing is downloaded."""
import dataclasses
import gzip
import pickle
import struct

import numpy as np
import pytest
import scipy.io
import torch

from raysearch import data
from raysearch.data import builtin
from trainables.ijsat import IJSAT
from trainables.ijsat_flow import flow_setting
from trainables.nets import resolve_arch


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


def write_idx(path, arr: np.ndarray) -> None:
    """An IDX file of unsigned bytes (MNIST's format), gzipped when the name ends in .gz."""
    raw = bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()
    with (gzip.open if path.suffix == ".gz" else open)(path, "wb") as fh:
        fh.write(raw)


def write_mnist(root, folder="MNIST", n_train=5100, n_test=30, gz=False):
    """torchvision's raw layout, <root>/<folder>/raw/...; returns the arrays written."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(3)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n).astype(np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(raw / f"{prefix}-images-idx3-ubyte{suffix}", x)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte{suffix}", y)
        arrays[prefix] = (x, y)
    return arrays


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


# ---------------------------------------------------------------- MNIST and Fashion-MNIST

def test_mnist_from_raw_idx_files(tmp_path):
    arrays = write_mnist(tmp_path)
    d = data.load("mnist", tmp_path)
    assert d.spec == builtin.SPECS["mnist"] == data.describe("mnist")
    assert (d.spec.channels, d.spec.size, d.spec.classes) == (1, 28, 10)
    assert (len(d.train), len(d.val), len(d.test)) == (100, 5000, 30)
    assert d.train.x.shape[1:] == (1, 28, 28) and d.train.x.dtype == torch.uint8
    assert not d.augment and not d.flip  # MNIST is trained on as it is
    x_test, y_test = arrays["t10k"]
    assert np.array_equal(d.test.x[:, 0].numpy(), x_test) and np.array_equal(d.test.y.numpy(), y_test)
    assert d.test.images().max() <= 1 and d.test.y.dtype == torch.int64


def test_fashion_mnist_reads_gzipped_files(tmp_path):
    arrays = write_mnist(tmp_path, folder="FashionMNIST", gz=True)
    d = data.load("fashion_mnist", tmp_path)
    assert d.spec.name == "fashion_mnist" and len(d.train) + len(d.val) == 5100
    assert np.array_equal(d.test.x[:, 0].numpy(), arrays["t10k"][0])


def test_mnist_has_the_benchmarks_radii():
    spec = data.describe("mnist")
    assert spec.eps_eval == 0.3 and spec.eps_eval_l2 == 2.0
    assert spec.eps_scale == pytest.approx(0.3 / (8 / 255))


def test_mnist_gets_the_small_cnn_and_a_flow_that_divides_28_px():
    """The auto architecture and ijsat's flow fit 28×28 images; digits and CIFAR are unchanged."""
    mnist, cifar, digits = (data.describe(n) for n in ("mnist", "cifar10", "digits"))
    assert resolve_arch("auto", mnist) == resolve_arch("auto", digits) == "small_cnn"
    assert resolve_arch("auto", cifar) == "preact18"
    assert resolve_arch("auto", dataclasses.replace(cifar, channels=1)) == "small_cnn"
    cfg = IJSAT.Config()
    assert [flow_setting(cfg, s)["levels"] for s in (digits, mnist, cifar)] == [2, 2, 3]


def test_missing_mnist_says_where_to_put_it(tmp_path):
    with pytest.raises(data.DataError, match="--download") as e:
        data.load("mnist", tmp_path)
    assert str(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte") in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("damage,needle", [
    (lambda p: p.write_bytes(b"\x00\x00\x0d\x03" + bytes(20)), "not an IDX file"),
    (lambda p: p.write_bytes(p.read_bytes()[:-5]), "holds"),
    (lambda p: p.write_bytes(b"\x00\x00\x08"), "not an IDX file"),
], ids=["float-magic", "truncated", "no-header"])
def test_a_damaged_idx_file_is_one_line(tmp_path, damage, needle):
    write_mnist(tmp_path, n_train=20, n_test=5)
    damage(tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte")
    with pytest.raises(data.DataError, match=needle) as e:
        data.load("mnist", tmp_path)
    assert "\n" not in str(e.value) and "t10k-images-idx3-ubyte" in str(e.value)


def test_mnist_labels_out_of_range_are_refused(tmp_path):
    write_mnist(tmp_path, n_train=20, n_test=5)
    write_idx(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", np.array([0, 1, 2, 3, 12]))
    with pytest.raises(data.DataError, match="label 12 is out of range 0..9"):
        data.load("mnist", tmp_path)
