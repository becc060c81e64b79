"""The built-in data sets: their specs (``SPECS``), validation sizes, and readers of their
files. ``digits`` is scikit-learn's bundled file; the others are torchvision's file formats
under ``--data-dir``, downloaded by torchvision with ``--download``."""
from __future__ import annotations

import gzip
import importlib.util
import io
import pickle
import struct
from pathlib import Path

import numpy as np
import torch

from raysearch.data.splits import DataError, Split
from trainables.spec import DataSpec

CIFAR_EPS = 8 / 255

SPECS = {
    "digits": DataSpec("digits", 1, 8, 10, (0.305,), (0.38,), eps_eval=0.2, eps_eval_l2=1.0,
                       eps_scale=0.2 / CIFAR_EPS),
    "cifar10": DataSpec("cifar10", 3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616),
                        eps_eval=CIFAR_EPS, eps_eval_l2=0.5, eps_scale=1.0),
    "cifar100": DataSpec("cifar100", 3, 32, 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                         eps_eval=CIFAR_EPS, eps_eval_l2=0.5, eps_scale=1.0),
    "svhn": DataSpec("svhn", 3, 32, 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
                     eps_eval=CIFAR_EPS, eps_eval_l2=0.5, eps_scale=1.0),
    # the MNIST robustness benchmark's radii (L∞ 0.3, L2 2.0); Fashion-MNIST uses the same
    "mnist": DataSpec("mnist", 1, 28, 10, (0.1307,), (0.3081,), eps_eval=0.3, eps_eval_l2=2.0,
                      eps_scale=0.3 / CIFAR_EPS),
    "fashion_mnist": DataSpec("fashion_mnist", 1, 28, 10, (0.2860,), (0.3530,), eps_eval=0.3,
                              eps_eval_l2=2.0, eps_scale=0.3 / CIFAR_EPS),
}
VAL_SIZE = {"digits": 180, "cifar10": 1000, "cifar100": 1000, "svhn": 1000, "mnist": 5000,
            "fashion_mnist": 5000}
AUGMENTED = ("cifar10", "cifar100", "svhn")  # random crops; CIFAR also flips (SVHN's digits would mirror)


def read(name: str, root: Path, download: bool) -> tuple[Split, Split]:
    """(train, test) of the built-in data set ``name``."""
    if name == "digits":
        return _digits()
    if name in CIFAR:
        return _cifar(name, root, download)
    if name in MNIST_FOLDER:
        return _mnist(name, root, download)
    return _svhn(root, download)


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


# torchvision's raw layout: <root>/<class name>/raw/<file>, each file optionally gzipped
MNIST_FOLDER = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _idx_file(raw: Path, filename: str) -> Path | None:
    """``raw/filename`` or its gzipped copy, whichever exists."""
    for path in (raw / filename, raw / f"{filename}.gz"):
        if path.is_file():
            return path
    return None


def read_idx(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes (the MNIST format: magic 0x0000 08 <ndim>, big-endian int32
    dimensions, then the data), plain or gzipped."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path} cannot be read ({e})") from None
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise DataError(f"{path} is not an IDX file of unsigned bytes (MNIST's format)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated (its header names {ndim} dimensions)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != int(np.prod(dims)):
        raise DataError(f"{path} holds {len(raw) - header} bytes for an array of shape {dims}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _mnist(name: str, root: Path, download: bool) -> tuple[Split, Split]:
    raw = root / MNIST_FOLDER[name] / "raw"
    wanted = [f for pair in MNIST_FILES.values() for f in pair]
    if download and any(_idx_file(raw, f) is None for f in wanted):
        import torchvision

        cls = torchvision.datasets.MNIST if name == "mnist" else torchvision.datasets.FashionMNIST
        try:
            cls(str(root), train=True, download=True)
        except Exception as e:  # network errors come in many types; report them in one line
            raise DataError(f"could not download {name} into {root}: {e}") from None
    missing = [f for f in wanted if _idx_file(raw, f) is None]
    if missing:
        raise DataError(f"{name} not found: expected {raw / missing[0]} (torchvision's raw IDX format, "
                        f"optionally .gz); put the files under --data-dir {root} or pass --download")
    out = []
    for images_file, labels_file in MNIST_FILES.values():
        x = read_idx(_idx_file(raw, images_file))
        y = read_idx(_idx_file(raw, labels_file))
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{raw}: {images_file} / {labels_file} hold shapes {x.shape} / {y.shape}; "
                            f"expected N×28×28 images and N labels")
        if y.size and int(y.max()) > 9:
            raise DataError(f"{raw / labels_file}: label {int(y.max())} is out of range 0..9")
        out.append(Split(torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64))))
    return out[0], out[1]
