"""Data sets as tensors in memory, split into train / validation / test, and the spec of any
data set by name (``describe``).

* ``digits``: scikit-learn's bundled 8×8 handwritten digits (1797 images, 17 grey levels),
  works offline; the default for smoke runs and tests.
* ``cifar10``, ``cifar100``, ``svhn``, ``mnist``, ``fashion_mnist``: torchvision's file formats
  under ``--data-dir`` (downloaded by torchvision with ``--download``). CIFAR's python batches
  are pickles; they are read with an unpickler that only accepts the numpy types those files
  contain. MNIST's are the raw IDX files, ``<data-dir>/MNIST/raw/train-images-idx3-ubyte`` (or
  ``FashionMNIST/raw/...``), plain or ``.gz``.
* ``npz:PATH`` and ``folder:PATH``: a user's own data (``raysearch.data.user``); its spec is
  inferred from the files and its radius must be given (``--eps-eval``).

Splits (train / validation / test images) and default radii (L∞ / L2, on [0, 1] pixels):

=================  =======================  ==============
digits             1257 / 180 / 360          0.2 / 1.0
cifar10, cifar100  49000 / 1000 / 10000      8/255 / 0.5
svhn               72257 / 1000 / 26032      8/255 / 0.5
mnist, fashion     55000 / 5000 / 10000      0.3 / 2.0 (the MNIST benchmark's radii)
npz:, folder:      a tenth of the training   --eps-eval (required) / derived
                   files held out (≤ 5000)   (``raysearch.data.user``)
=================  =======================  ==============

The validation split (held out from training, the same images every time) drives the search;
the test split is only for the final evaluation, so hyperparameters are never chosen on test
data. Random crops are used in training on CIFAR and SVHN (CIFAR also flips), nowhere else:
nothing is known of what a user's images are invariant to.
"""
from __future__ import annotations

import functools
from pathlib import Path

from raysearch.data import builtin, user
from raysearch.data.batches import augment_batch, eval_subset, shuffled_batches
from raysearch.data.builtin import CIFAR_EPS, SPECS, VAL_SIZE
from raysearch.data.splits import Data, DataError, Split, hold_out
from trainables.spec import DataSpec

DATASETS = tuple(SPECS)
USER_KINDS = tuple(f"{kind}:PATH" for kind in user.KINDS)

__all__ = ["CIFAR_EPS", "DATASETS", "SPECS", "USER_KINDS", "VAL_SIZE", "Data", "DataError",
           "Split", "augment_batch", "canonical", "describe", "eval_subset", "load", "shuffled_batches",
           "slug"]


def canonical(name: str) -> str:
    """The name a data set is recorded under: a built-in name as it is, a user's data set as
    ``kind:<absolute path>`` (so that workers with another working directory find it)."""
    if name in SPECS:
        return name
    kind, sep, path = name.partition(":")
    if not sep:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS + USER_KINDS)}")
    if kind not in user.KINDS:
        raise DataError(f"unknown kind of data set {kind!r} in {name!r}; known: {', '.join(USER_KINDS)}")
    if not path:
        raise DataError(f"{name!r}: give the path after '{kind}:'")
    return f"{kind}:{Path(path).expanduser().resolve()}"


def slug(name: str) -> str:
    """A short name fit for a folder name: the built-in name, or ``kind-<file stem>``."""
    if name in SPECS:
        return name
    kind, _, path = canonical(name).partition(":")
    return f"{kind}-{Path(path).stem or 'data'}"


def describe(name: str, data_dir: str | Path = "data", eps_eval: float | None = None) -> DataSpec:
    """The spec of data set ``name``. A built-in one has a fixed spec (``SPECS``; ``eps_eval``
    there changes only the evaluation radius, which the caller applies). A user's data set is
    read (once per process) and its spec inferred; ``eps_eval`` (the L∞ radius on [0, 1]) is
    required for it and sets eps_eval_l2 and eps_scale. ``data_dir`` is where built-in files
    live; it does not matter to a spec."""
    name = canonical(name)
    if name in SPECS:
        return SPECS[name]
    return _user_spec(name, eps_eval)


@functools.lru_cache(maxsize=8)
def _user_spec(name: str, eps_eval: float | None) -> DataSpec:
    if not eps_eval:
        raise DataError(f"{name} has no known attack radius: pass --eps-eval (the L∞ radius on [0, 1] "
                        f"pixels, e.g. 0.0314 = 8/255 for natural images, 0.3 for MNIST-like digits)")
    if not 0 < eps_eval <= 1:
        raise DataError(f"eps_eval must be in (0, 1] on the [0, 1] pixel scale, got {eps_eval}")
    kind, _, path = name.partition(":")
    return user.spec(name, user.read(kind, Path(path)), eps_eval)


def load(name: str, data_dir: str | Path = "data", download: bool = False,
         eps_eval: float | None = None) -> Data:
    """The data set ``name`` with its train / validation / test splits. ``eps_eval`` is required
    for a user's data set (see ``describe``) and ignored for a built-in one."""
    name = canonical(name)
    if name in SPECS:
        train, test = builtin.read(name, Path(data_dir), download)
        train, val = hold_out(train, VAL_SIZE[name])
        return Data(SPECS[name], train, val, test, augment=name in builtin.AUGMENTED, flip=name.startswith("cifar"))
    spec = describe(name, data_dir, eps_eval)
    kind, _, path = name.partition(":")
    read = user.read(kind, Path(path))
    train, val = hold_out(read.train, user.val_size(len(read.train)))
    return Data(spec, train, val, read.test, augment=False, flip=False)
