"""Data sets as uint8 tensors in memory, split into train / validation / test.

* ``digits``: scikit-learn's bundled 8×8 handwritten digits (1797 images, 17 grey levels),
  works offline; the default for smoke runs and tests.
* ``cifar10``, ``cifar100``, ``svhn``: the torchvision file formats under ``--data-dir``
  (downloaded by torchvision with ``--download``). CIFAR's python batches are pickles; they are
  read with an unpickler that only accepts the numpy types those files contain.

The validation split (held out from training) drives the search; the test split is only for
the final evaluation, so hyperparameters are never chosen on test data.
"""
from __future__ import annotations

import importlib.util
import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainables.base import DataSpec

CIFAR_EPS = 8 / 255


class DataError(Exception):
    """Data is missing or malformed; the message says what to do."""


SPECS = {
    "digits": DataSpec("digits", 1, 8, 10, (0.305,), (0.38,), eps_eval=0.2, eps_eval_l2=1.0,
                       eps_scale=0.2 / CIFAR_EPS),
    "cifar10": DataSpec("cifar10", 3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616),
                        eps_eval=CIFAR_EPS, eps_eval_l2=0.5, eps_scale=1.0),
    "cifar100": DataSpec("cifar100", 3, 32, 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                         eps_eval=CIFAR_EPS, eps_eval_l2=0.5, eps_scale=1.0),
    "svhn": DataSpec("svhn", 3, 32, 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
                     eps_eval=CIFAR_EPS, eps_eval_l2=0.5, eps_scale=1.0),
}
DATASETS = tuple(SPECS)
VAL_SIZE = {"digits": 180, "cifar10": 1000, "cifar100": 1000, "svhn": 1000}


@dataclass
class Split:
    x: torch.Tensor  # uint8, N×C×H×W
    y: torch.Tensor  # int64, N

    def __len__(self) -> int:
        return len(self.y)

    def images(self, idx=None) -> torch.Tensor:
        """Float images in [0, 1]."""
        x = self.x if idx is None else self.x[idx]
        return x.float().div_(self.scale)

    scale: float = 255.0


@dataclass
class Data:
    spec: DataSpec
    train: Split
    val: Split
    test: Split
    augment: bool  # random crop + flip in the training loop (32×32 natural images)
    flip: bool


def load(name: str, data_dir: str | Path = "data", download: bool = False) -> Data:
    if name not in SPECS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if name == "digits":
        train, test = _digits()
    elif name in ("cifar10", "cifar100"):
        train, test = _cifar(name, Path(data_dir), download)
    else:
        train, test = _svhn(Path(data_dir), download)
    train, val = _hold_out(train, VAL_SIZE[name])
    return Data(SPECS[name], train, val, test, augment=name != "digits", flip=name.startswith("cifar"))


def _hold_out(split: Split, n: int, seed: int = 0) -> tuple[Split, Split]:
    perm = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    keep, held = perm[n:], perm[:n]
    return (Split(split.x[keep], split.y[keep], split.scale),
            Split(split.x[held], split.y[held], split.scale))


def _digits_file() -> Path:
    """scikit-learn's bundled digits.csv.gz, found without importing scikit-learn (~1 s)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the bundled digits data set comes with scikit-learn: pip install scikit-learn")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"


def _digits() -> tuple[Split, Split]:
    """The 1797 digits (8×8, 0..16) as sklearn.datasets.load_digits gives them: 360 test, the
    rest train."""
    table = np.loadtxt(_digits_file(), delimiter=",")
    x = torch.from_numpy(table[:, :-1].astype(np.uint8).reshape(-1, 1, 8, 8))  # 0..16
    y = torch.from_numpy(table[:, -1].astype(np.int64))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(1))
    test, train = perm[:360], perm[360:]
    return Split(x[train], y[train], 16.0), Split(x[test], y[test], 16.0)


CIFAR = {
    "cifar10": dict(folder="cifar-10-batches-py", train=[f"data_batch_{i}" for i in range(1, 6)],
                    test=["test_batch"], label=b"labels"),
    "cifar100": dict(folder="cifar-100-python", train=["train"], test=["test"], label=b"fine_labels"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Loads the CIFAR python batches (dicts of bytes, lists and numpy arrays) and nothing else:
    any other global in the file is refused, so a crafted file cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def _read_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as fh:
            d = _NumpyOnlyUnpickler(io.BufferedReader(fh), encoding="bytes").load()
        x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(d[label_key], dtype=np.int64)
    except (pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError) as e:
        raise DataError(f"{path} is not a CIFAR python batch ({e})") from None
    return x, y


def _cifar(name: str, root: Path, download: bool) -> tuple[Split, Split]:
    meta = CIFAR[name]
    folder = root / meta["folder"]
    if download and not folder.exists():
        import torchvision

        cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
        from torchvision.datasets.utils import download_and_extract_archive

        try:
            download_and_extract_archive(cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5)
        except Exception as e:  # network errors come in many types; report them in one line
            raise DataError(f"could not download {name} into {root}: {e}") from None
    missing = [f for f in meta["train"] + meta["test"] if not (folder / f).exists()]
    if missing:
        raise DataError(f"{name} not found: expected {folder}/{missing[0]} (the torchvision python "
                        f"format); put the extracted archive under --data-dir {root} or pass --download")
    parts = {s: [_read_cifar_batch(folder / f, meta["label"]) for f in meta[s]] for s in ("train", "test")}
    out = []
    for s in ("train", "test"):
        x = np.concatenate([p[0] for p in parts[s]])
        y = np.concatenate([p[1] for p in parts[s]])
        out.append(Split(torch.from_numpy(x), torch.from_numpy(y)))
    return out[0], out[1]


def _svhn(root: Path, download: bool) -> tuple[Split, Split]:
    import scipy.io

    out = []
    for split in ("train", "test"):
        path = root / f"{split}_32x32.mat"
        if download and not path.exists():
            import torchvision
            from torchvision.datasets.utils import download_url

            url, fname, md5 = torchvision.datasets.SVHN.split_list[split]
            try:
                download_url(url, str(root), fname, md5)
            except Exception as e:
                raise DataError(f"could not download svhn into {root}: {e}") from None
        if not path.exists():
            raise DataError(f"svhn not found: expected {path} (torchvision's .mat format); put the "
                            f"files under --data-dir {root} or pass --download")
        try:
            m = scipy.io.loadmat(str(path))
            x = np.transpose(m["X"], (3, 2, 0, 1)).astype(np.uint8)  # H×W×C×N -> N×C×H×W
            y = m["y"].astype(np.int64).reshape(-1) % 10  # SVHN labels the digit 0 as 10
        except (KeyError, ValueError, OSError) as e:
            raise DataError(f"{path} is not an SVHN .mat file ({e})") from None
        out.append(Split(torch.from_numpy(x), torch.from_numpy(y)))
    return out[0], out[1]


def eval_subset(split: Split, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed subset (same seed -> same images) as float images and labels."""
    n = min(n, len(split))
    idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n]
    return split.images(idx), split.y[idx]


def shuffled_batches(split: Split, batch_size: int, device: torch.device | str = "cpu",
                     augment: bool = False, flip: bool = False):
    """One shuffled pass over ``split`` as (images, labels) batches on ``device``, with random
    crop (and flip) when ``augment``: the loader of component pre-training."""
    perm = torch.randperm(len(split))
    for i in range(0, len(perm), batch_size):
        idx = perm[i:i + batch_size]
        x = split.images(idx).to(device)
        yield (augment_batch(x, flip) if augment else x), split.y[idx].to(device)


def augment_batch(x: torch.Tensor, flip: bool, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding and (optionally) horizontal flip, per image, on x's device."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    i = torch.randint(0, 2 * pad + 1, (n,), device=x.device)
    j = torch.randint(0, 2 * pad + 1, (n,), device=x.device)
    rows = (i[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (j[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    out = padded[torch.arange(n, device=x.device)[:, None, None, None],
                 torch.arange(x.shape[1], device=x.device)[None, :, None, None], rows, cols]
    if flip:
        mask = torch.rand(n, device=x.device) < 0.5
        out[mask] = out[mask].flip(3)
    return out
