"""A user's own data: ``npz:PATH`` (arrays x_train, y_train, x_test, y_test) or ``folder:PATH``
(an ImageFolder-style tree: train/ and test/, one sub-folder per class). Channels, size, classes
and per-channel mean and std are inferred from the training split. Nothing is known about the
scale of such data, so the L∞ radius (``--eps-eval``) comes from the user and the rest follows:

* ``eps_scale = eps_eval / (8/255)``: the search spaces' budgets are written at CIFAR's scale.
* ``eps_eval_l2 = eps_eval · sqrt(C·H·W) · 0.5 / (8/255 · sqrt(3·32·32))``: an L∞ ball of radius
  eps reaches eps·sqrt(C·H·W) in L2 (its corners), and CIFAR's radii (8/255 L∞, 0.5 L2) put the
  L2 ball at 0.288 of that; the same fraction holds for every image shape (MNIST at 0.3: 2.42,
  close to the benchmark's 2.0).

Images are 1- or 3-channel and square; an npz image array is N×C×H×W or N×H×W×C (whichever puts
a 1 or 3 in the channel axis and leaves a square image; N×H×W is 1-channel), uint8 0..255 or
float in [0, 1]; labels are integers 0..K-1. Anything else is a ``DataError`` of one line.
"""
from __future__ import annotations

import functools
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from raysearch.data.builtin import CIFAR_EPS
from raysearch.data.splits import DataError, Split
from trainables.spec import DataSpec

KINDS = ("folder", "npz")
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # ImageFolder's
# PIL modes read as they are or converted (alpha dropped, palettes expanded)
PIL_MODES = {"1": "L", "L": "L", "LA": "L", "P": "RGB", "RGB": "RGB", "RGBA": "RGB", "CMYK": "RGB", "YCbCr": "RGB"}
MIN_TRAIN = 10  # images: at least one held out for validation and some left to train on
MAX_VAL = 5000  # validation images held out of a large training split
L2_PER_LINF = 0.5 / (CIFAR_EPS * math.sqrt(3 * 32 * 32))  # CIFAR's L2 radius / its L∞ ball's L2 reach


@dataclass(frozen=True)
class UserData:
    """A user's data set as read: the splits, the number of classes and the training split's
    per-channel mean and std of [0, 1] pixels."""

    train: Split
    test: Split
    classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def val_size(n_train: int) -> int:
    """Validation images held out of ``n_train``: a tenth, at most MAX_VAL."""
    return min(MAX_VAL, max(1, n_train // 10))


def l2_radius(eps_eval: float, channels: int, size: int) -> float:
    return eps_eval * math.sqrt(channels * size * size) * L2_PER_LINF


def spec(name: str, data: UserData, eps_eval: float) -> DataSpec:
    """The spec of a user's data set ``name`` read as ``data``, evaluated at L∞ radius ``eps_eval``."""
    _, channels, size, _ = data.train.x.shape
    return DataSpec(name, channels, size, data.classes, data.mean, data.std, eps_eval=eps_eval,
                    eps_eval_l2=l2_radius(eps_eval, channels, size), eps_scale=eps_eval / CIFAR_EPS)


@functools.lru_cache(maxsize=2)
def read(kind: str, path: Path) -> UserData:
    """Read, check and summarize a user's data set (once per process and path)."""
    train, test = (_read_npz if kind == "npz" else _read_folder)(path)
    source = f"{kind}:{path}"
    if len(train) < MIN_TRAIN:
        raise DataError(f"{source}: {len(train)} training images; at least {MIN_TRAIN} are needed")
    if len(test) == 0:
        raise DataError(f"{source}: the test split holds no images")
    if train.x.shape[1:] != test.x.shape[1:]:
        raise DataError(f"{source}: training images are {_shape(train)} but test images {_shape(test)}")
    classes = int(train.y.max()) + 1
    if classes < 2:
        raise DataError(f"{source}: the training labels hold one class; at least 2 are needed")
    if int(test.y.max()) >= classes:
        raise DataError(f"{source}: a test label is {int(test.y.max())}, but the training labels are 0..{classes - 1}")
    mean, std = _moments(train)
    return UserData(train, test, classes, mean, std)


def _shape(split: Split) -> str:
    c, h, w = split.x.shape[1:]
    return f"{c}×{h}×{w}"


def _moments(split: Split, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of [0, 1] pixels (float64, in chunks: no full float copy); a
    constant channel gets std 1, so normalizing only centres it."""
    total = torch.zeros(split.x.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for i in range(0, len(split), chunk):
        x = split.x[i:i + chunk].to(torch.float64) / split.scale
        total += x.sum(dim=(0, 2, 3))
        squares += (x * x).sum(dim=(0, 2, 3))
    count = split.x[:, 0].numel()
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(0).sqrt()
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


# ---------------------------------------------------------------- npz

def _read_npz(path: Path) -> tuple[Split, Split]:
    source = f"npz:{path}"
    if not path.is_file():
        raise DataError(f"{source}: no such file")
    try:
        archive = np.load(path, allow_pickle=False)  # no pickled objects: a file cannot run code
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(f"{source} is not a .npz archive ({e})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{source} holds a single array; expected an .npz archive of {', '.join(NPZ_KEYS)}")
    with archive:
        missing = [k for k in NPZ_KEYS if k not in archive.files]
        if missing:
            raise DataError(f"{source} has no {', '.join(missing)}; expected arrays {', '.join(NPZ_KEYS)}")
        try:
            arrays = {k: archive[k] for k in NPZ_KEYS}
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise DataError(f"{source}: an array cannot be read ({e})") from None
    out = []
    for split in ("train", "test"):
        x, scale = _images(arrays[f"x_{split}"], f"{source}: x_{split}")
        y = _labels(arrays[f"y_{split}"], len(x), f"{source}: y_{split}")
        out.append(Split(x, y, scale))
    return out[0], out[1]


def _images(arr: np.ndarray, what: str) -> tuple[torch.Tensor, float]:
    """N×C×H×W images and their scale (255 for bytes, 1 for floats in [0, 1])."""
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4:
        raise DataError(f"{what} has shape {arr.shape}; expected N×C×H×W or N×H×W×C images")
    n, a, b, c = arr.shape
    if a in (1, 3) and b == c:
        pass
    elif c in (1, 3) and a == b:
        arr = arr.transpose(0, 3, 1, 2)
    else:
        raise DataError(f"{what} has shape {arr.shape}; expected square images with 1 or 3 channels, "
                        f"N×C×H×W or N×H×W×C")
    if n == 0:
        raise DataError(f"{what} holds no images")
    if arr.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(arr)), 255.0
    if np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.bool_:
        low, high = int(arr.min()), int(arr.max())
        if low < 0 or high > 255:
            raise DataError(f"{what}: integer pixels must be 0..255, found {low}..{high}")
        return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.uint8)), 255.0
    if np.issubdtype(arr.dtype, np.floating):
        low, high = float(arr.min()), float(arr.max())
        if not (0.0 <= low and high <= 1.0):  # also false for NaN
            raise DataError(f"{what}: float pixels must be in [0, 1], found {low:.4g}..{high:.4g}")
        return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)), 1.0
    raise DataError(f"{what} has dtype {arr.dtype}; expected uint8 (0..255) or float in [0, 1]")


def _labels(arr: np.ndarray, n: int, what: str) -> torch.Tensor:
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise DataError(f"{what} has shape {arr.shape}; expected one integer label per image (not one-hot)")
    if len(arr) != n:
        raise DataError(f"{what} holds {len(arr)} labels for {n} images")
    integral = np.issubdtype(arr.dtype, np.integer) or (
        np.issubdtype(arr.dtype, np.floating) and bool(np.all(np.isfinite(arr) & (arr == np.round(arr)))))
    if not integral or arr.dtype == np.bool_:
        raise DataError(f"{what} has dtype {arr.dtype} and values that are not all integers; expected "
                        f"integer labels 0..K-1")
    if len(arr) and arr.min() < 0:
        raise DataError(f"{what} holds label {int(arr.min())}; labels must be 0..K-1")
    return torch.from_numpy(arr.astype(np.int64))


# ---------------------------------------------------------------- folder

def _class_folders(folder: Path) -> list[str]:
    """Sub-folder names, sorted as torchvision's ImageFolder sorts them (hidden ones skipped)."""
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _read_folder(root: Path) -> tuple[Split, Split]:
    source = f"folder:{root}"
    if not root.is_dir():
        raise DataError(f"{source}: no such folder")
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise DataError(f"{source}: {root / split} is missing; expected train/ and test/, one folder per class")
    classes = _class_folders(root / "train")
    if not classes:
        raise DataError(f"{source}: {root / 'train'} holds no class folders")
    strays = [c for c in _class_folders(root / "test") if c not in classes]
    if strays:
        raise DataError(f"{source}: {root / 'test' / strays[0]} has no class folder of that name in train/")
    first: dict = {}  # the first image read: every other must have its size and channels
    out = []
    for split in ("train", "test"):
        xs, ys = [], []
        for label, name in enumerate(classes):
            folder = root / split / name
            if not folder.is_dir():
                continue  # a test split may lack a class
            files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise DataError(f"{source}: {folder} is an empty class folder (no {', '.join(IMAGE_SUFFIXES)} images)")
            for path in files:
                xs.append(_read_image(path, first))
                ys.append(label)
        if not xs:
            raise DataError(f"{source}: {root / split} holds no images")
        out.append(Split(torch.from_numpy(np.stack(xs)), torch.tensor(ys, dtype=torch.int64)))
    return out[0], out[1]


def _read_image(path: Path, first: dict) -> np.ndarray:
    """One image as C×H×W uint8, checked against the first image read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            mode = image.mode
            if mode not in PIL_MODES:
                raise DataError(f"{path}: PIL image mode {mode} is not supported; save it as 8-bit grey or RGB")
            arr = np.asarray(image.convert(PIL_MODES[mode]) if PIL_MODES[mode] != mode else image)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"{path} cannot be read as an image ({e})") from None
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    if arr.shape[1] != arr.shape[2]:
        raise DataError(f"{path} is {arr.shape[2]}×{arr.shape[1]} px; images must be square")
    if not first:
        first.update(shape=arr.shape, path=path)
    elif arr.shape != first["shape"]:
        c, h, w = arr.shape
        c0, h0, w0 = first["shape"]
        raise DataError(f"{path} is {w}×{h} px with {c} channel(s), but {first['path']} is {w0}×{h0} px with "
                        f"{c0}: all images must share one size and channel count")
    return np.ascontiguousarray(arr, dtype=np.uint8)
