"""A user's own data (raysearch.data.user): npz archives and ImageFolder-style trees written
here, their inferred specs and splits, and one clear line for each kind of bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from raysearch import data
from raysearch.data import user

CIFAR_EPS = 8 / 255


def write_npz(path, n_train=40, n_test=10, classes=4, size=8, channels=3, layout="NHWC", dtype="uint8", **override):
    """An npz data set of random images; ``override`` replaces (or, as None, drops) arrays."""
    rng = np.random.default_rng(0)
    shape = {"NHWC": (size, size, channels), "NCHW": (channels, size, size)}[layout]
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
        arrays[f"x_{split}"] = x if dtype == "uint8" else (x / 255).astype(dtype)
        arrays[f"y_{split}"] = np.arange(n) % classes
    arrays.update(override)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return arrays


def write_folder(root, classes=("cat", "dog", "ant"), n_train=4, n_test=2, size=6, mode="RGB"):
    """train/<class>/*.png and test/<class>/*.png of random pixels."""
    rng = np.random.default_rng(1)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    for split, n in (("train", n_train), ("test", n_test)):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(folder / f"{i}.png")
    return root


def one_line_error(name: str, eps_eval: float | None = 0.1) -> str:
    with pytest.raises(data.DataError) as e:
        data.load(name, eps_eval=eps_eval)
    message = str(e.value)
    assert "\n" not in message and message, message
    return message


# ---------------------------------------------------------------- loading

def test_npz_nhwc_uint8(tmp_path):
    arrays = write_npz(tmp_path / "set.npz")
    d = data.load(f"npz:{tmp_path / 'set.npz'}", eps_eval=0.05)
    spec = d.spec
    assert (spec.channels, spec.size, spec.classes) == (3, 8, 4)
    assert spec.name == f"npz:{tmp_path / 'set.npz'}"
    assert (len(d.train), len(d.val), len(d.test)) == (36, 4, 10)  # a tenth held out for validation
    assert d.train.x.dtype == torch.uint8 and d.train.scale == 255.0
    assert np.array_equal(d.test.x.numpy(), arrays["x_test"].transpose(0, 3, 1, 2))
    assert np.array_equal(d.test.y.numpy(), arrays["y_test"])
    pixels = arrays["x_train"].transpose(0, 3, 1, 2) / 255
    assert spec.mean == pytest.approx(pixels.mean(axis=(0, 2, 3)), abs=1e-4)
    assert spec.std == pytest.approx(pixels.std(axis=(0, 2, 3)), abs=1e-4)
    assert spec.eps_eval == 0.05 and spec.eps_scale == pytest.approx(0.05 / CIFAR_EPS)
    assert not d.augment and not d.flip


def test_npz_nchw_float(tmp_path):
    arrays = write_npz(tmp_path / "f.npz", layout="NCHW", channels=1, size=12, dtype="float32", classes=3)
    d = data.load(f"npz:{tmp_path / 'f.npz'}", eps_eval=0.3)
    assert (d.spec.channels, d.spec.size, d.spec.classes) == (1, 12, 3)
    assert d.test.x.dtype == torch.float32 and d.test.scale == 1.0
    assert torch.equal(d.test.images(), torch.from_numpy(arrays["x_test"]))
    before = d.test.x.clone()
    d.test.images()
    assert torch.equal(d.test.x, before)  # reading images never changes the split


def test_grey_images_without_a_channel_axis_and_integer_valued_float_labels(tmp_path):
    rng = np.random.default_rng(2)
    write_npz(tmp_path / "g.npz", x_train=rng.integers(0, 256, (30, 5, 5), dtype=np.uint8),
              y_train=(np.arange(30) % 2).astype(np.float32).reshape(-1, 1),
              x_test=rng.integers(0, 256, (6, 5, 5), dtype=np.uint8), y_test=np.arange(6) % 2)
    d = data.load(f"npz:{tmp_path / 'g.npz'}", eps_eval=0.1)
    assert d.train.x.shape[1:] == (1, 5, 5) and d.spec.classes == 2 and d.train.y.dtype == torch.int64


def test_folder_tree_of_pngs(tmp_path):
    root = write_folder(tmp_path / "pets")
    d = data.load(f"folder:{root}", eps_eval=CIFAR_EPS)
    assert (d.spec.channels, d.spec.size, d.spec.classes) == (3, 6, 3)
    assert (len(d.train) + len(d.val), len(d.test)) == (12, 6) and len(d.val) == 1
    # classes numbered in sorted order, as torchvision's ImageFolder numbers them
    png = np.asarray(Image.open(root / "test" / "cat" / "1.png")).transpose(2, 0, 1)
    assert any(np.array_equal(png, x) and y == 1 for x, y in zip(d.test.x.numpy(), d.test.y.tolist()))
    assert sorted(set(d.test.y.tolist())) == [0, 1, 2]


def test_a_grey_folder_gives_one_channel(tmp_path):
    root = write_folder(tmp_path / "g", classes=("a", "b"), n_train=5, n_test=1, size=4, mode="L")
    assert data.describe(f"folder:{root}", eps_eval=0.1).channels == 1


def test_describe_reads_the_files_once_and_matches_load(tmp_path):
    write_npz(tmp_path / "once.npz")
    name = f"npz:{tmp_path / 'once.npz'}"
    spec = data.describe(name, eps_eval=0.1)
    (tmp_path / "once.npz").unlink()  # later calls in this process use what was read
    assert data.load(name, eps_eval=0.1).spec == spec


def test_a_relative_path_is_recorded_absolute(tmp_path, monkeypatch):
    write_npz(tmp_path / "rel.npz")
    monkeypatch.chdir(tmp_path)
    assert data.canonical("npz:rel.npz") == f"npz:{tmp_path / 'rel.npz'}"
    assert data.describe("npz:rel.npz", eps_eval=0.1).name == f"npz:{tmp_path / 'rel.npz'}"
    assert data.slug("npz:rel.npz") == "npz-rel" and data.slug("cifar10") == "cifar10"


def test_the_l2_radius_keeps_cifars_ratio_for_every_shape():
    """8/255 L∞ <-> 0.5 L2 on 3×32×32; the L2 radius grows with sqrt(pixels)."""
    assert user.l2_radius(CIFAR_EPS, 3, 32) == pytest.approx(0.5)
    assert user.l2_radius(2 * CIFAR_EPS, 3, 32) == pytest.approx(1.0)
    assert user.l2_radius(CIFAR_EPS, 3, 64) == pytest.approx(1.0)
    assert user.l2_radius(0.3, 1, 28) == pytest.approx(0.3 * 28 * 0.5 / (CIFAR_EPS * math.sqrt(3072)))


def test_the_validation_split_is_a_tenth_at_most_5000():
    assert [user.val_size(n) for n in (10, 40, 600, 60000, 10 ** 6)] == [1, 4, 60, 5000, 5000]


# ---------------------------------------------------------------- bad input: one line each

def test_a_users_data_set_needs_a_radius(tmp_path):
    write_npz(tmp_path / "r.npz")
    assert "--eps-eval" in one_line_error(f"npz:{tmp_path / 'r.npz'}", eps_eval=None)


def test_unknown_names_and_kinds():
    assert "unknown dataset 'imagenet'" in one_line_error("imagenet")
    message = one_line_error("xyz:/some/where")
    assert "unknown kind of data set 'xyz'" in message and "npz:PATH" in message
    assert "give the path" in one_line_error("npz:")


@pytest.mark.parametrize("override,needle", [
    ({"y_test": None}, "has no y_test"),
    ({"x_train": np.zeros((40, 5, 8, 8), np.uint8)}, "square images with 1 or 3 channels"),
    ({"x_train": np.zeros((40, 8, 6, 3), np.uint8)}, "square images"),
    ({"x_train": np.zeros((40, 8), np.uint8)}, "expected N×C×H×W or N×H×W×C"),
    ({"x_test": np.zeros((10, 6, 6, 3), np.uint8)}, "training images are 3×8×8 but test images 3×6×6"),
    ({"y_test": np.full(10, 7)}, "a test label is 7, but the training labels are 0..3"),
    ({"y_train": np.arange(40) - 1}, "labels must be 0..K-1"),
    ({"y_train": np.zeros(40, int)}, "one class"),
    ({"y_train": np.eye(4)[np.arange(40) % 4]}, "not one-hot"),
    ({"y_train": np.arange(40) % 4 + 0.5}, "not all integers"),
    ({"y_test": np.zeros(9, int)}, "holds 9 labels for 10 images"),
    ({"x_train": np.full((40, 8, 8, 3), 1.5, np.float32)}, "float pixels must be in [0, 1]"),
    ({"x_train": np.full((40, 8, 8, 3), 300, np.int64)}, "integer pixels must be 0..255"),
    ({"x_train": np.zeros((5, 8, 8, 3), np.uint8), "y_train": np.arange(5) % 4}, "at least 10 are needed"),
    ({"x_test": np.zeros((0, 8, 8, 3), np.uint8), "y_test": np.zeros(0, int)}, "holds no images"),
    ({"y_train": np.array([None] * 40, dtype=object)}, "cannot be read"),
], ids=["missing-key", "bad-channels", "not-square", "2-d", "train-test-shapes", "test-label-too-big",
        "negative-label", "one-class", "one-hot", "fractional-labels", "length-mismatch", "float-range",
        "int-range", "too-few", "empty-test", "pickled-objects"])
def test_a_bad_npz_is_one_line(tmp_path, override, needle):
    write_npz(tmp_path / "bad.npz", **override)
    message = one_line_error(f"npz:{tmp_path / 'bad.npz'}")
    assert needle in message and str(tmp_path / "bad.npz") in message, message


def test_a_file_that_is_not_an_npz_or_is_missing(tmp_path):
    (tmp_path / "text.npz").write_text("hello")
    assert "is not a .npz archive" in one_line_error(f"npz:{tmp_path / 'text.npz'}")
    np.save(tmp_path / "single.npy", np.zeros(3))
    assert "single array" in one_line_error(f"npz:{tmp_path / 'single.npy'}")
    assert "no such file" in one_line_error(f"npz:{tmp_path / 'nowhere.npz'}")
    assert "no such folder" in one_line_error(f"folder:{tmp_path / 'nowhere'}")


def test_mixed_image_sizes_name_the_offending_file(tmp_path):
    root = write_folder(tmp_path / "mixed")
    odd = root / "train" / "dog" / "2.png"
    Image.fromarray(np.zeros((7, 7, 3), np.uint8)).save(odd)
    message = one_line_error(f"folder:{root}")
    assert str(odd) in message and "7×7" in message and "share one size and channel count" in message


def test_mixed_channel_counts_name_the_offending_file(tmp_path):
    root = write_folder(tmp_path / "mixed")
    odd = root / "test" / "ant" / "0.png"
    Image.fromarray(np.zeros((6, 6), np.uint8), "L").save(odd)
    message = one_line_error(f"folder:{root}")
    assert str(odd) in message and "1 channel" in message


@pytest.mark.parametrize("damage,needle", [
    (lambda root: [p.unlink() for p in (root / "train" / "dog").iterdir()], "empty class folder"),
    (lambda root: [p.unlink() for p in (root / "test" / "cat").iterdir()], "empty class folder"),
    (lambda root: (root / "test" / "zebra").mkdir(), "has no class folder of that name in train/"),
    (lambda root: (root / "train" / "cat" / "9.png").write_bytes(b"not a png"), "cannot be read as an image"),
    (lambda root: Image.fromarray(np.zeros((6, 4, 3), np.uint8)).save(root / "train" / "cat" / "9.png"),
     "must be square"),
    (lambda root: Image.fromarray(np.zeros((6, 6), np.uint16)).save(root / "train" / "cat" / "9.png"),
     "is not supported; save it as 8-bit grey or RGB"),
], ids=["empty-train-class", "empty-test-class", "stray-test-class", "corrupt-image", "not-square", "16-bit"])
def test_a_bad_folder_is_one_line(tmp_path, damage, needle):
    root = write_folder(tmp_path / "tree")
    damage(root)
    assert needle in one_line_error(f"folder:{root}")


def test_a_folder_needs_train_and_test(tmp_path):
    root = write_folder(tmp_path / "tree")
    for p in sorted((root / "test").rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    (root / "test").rmdir()
    message = one_line_error(f"folder:{root}")
    assert f"{root / 'test'} is missing" in message and "one folder per class" in message
