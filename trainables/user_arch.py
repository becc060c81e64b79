"""Users' own classifiers: ``--arch module:function`` or ``--arch path/to/file.py:function``.

The function (any callable: a function or a class) is a *factory*: it receives the data set's
``DataSpec`` (channels, size, classes, mean, std) and returns a fresh ``torch.nn.Module`` mapping
images in [0, 1], N×C×H×W, to logits, N×classes. Normalization, if the model wants it, happens
inside the module (``spec.mean``/``spec.std``): attacks work on [0, 1] pixels.

Defenses that work on the penultimate features need more (``NEEDS_FEATURES``): ``rvs``, whose
generator and OT term compare the features of natural and perturbed images, and ``atld``, whose
classifier step reads logits and features in one pass for every ``latent`` (and whose
discriminator sees the features with ``latent=features``, sized by ``head.in_features``). For
them the model must also have

* ``features(x)`` -> the penultimate features, a flat N×D tensor, and
* ``head``, an ``nn.Linear(D, classes)`` that ``forward`` applies to exactly those features, so
  ``model(x) == model.head(model.features(x))``. Under several DDP workers the features are taken
  as the input of ``head`` during the ordinary forward, so ``forward`` must call ``head``.

The built-in networks (``trainables.nets``) are examples. ``check_arch`` tries all of this on a
batch of two random images before Ray starts and raises ``ArchError`` with one line.

Where the factory is found: a module is imported by name, so it must be importable in every
process that builds the model: on one machine, Ray adds the driver's working directory to its
workers' ``sys.path``, so a module in the folder the search is started from (or on
``PYTHONPATH``) works; on a cluster it must be installed or on ``PYTHONPATH`` on every node, and
later ``python -m raysearch.evaluate`` runs need it too. A file path is resolved against the
current directory once (``canonical_arch``) and the absolute path is what the trials record, so
the file must be at that same path on every node (e.g. on the shared storage) and whenever the
experiment is evaluated again. Pre-trained components are cached by the arch string, not by the
file's contents: change the name after changing the model.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from trainables.spec import DataSpec

# methods that read the classifier's penultimate features (features/head), and why
NEEDS_FEATURES = {
    "rvs": "its generator and OT term compare penultimate features",
    "atld": "its classifier step reads logits and features in one pass",
}
FEATURES_RULE = ("features(x) -> (N, D) penultimate features and a head nn.Linear(D, classes) "
                 "that forward applies to them (model(x) == model.head(model.features(x)))")
_TOLERANCE = dict(rtol=1e-4, atol=1e-5)


class ArchError(ValueError):
    """A user's architecture cannot be used; the message is one line for the user."""


def is_user_arch(arch: str) -> bool:
    """``module:function`` or ``path/to/file.py:function`` (built-in names have no colon)."""
    return ":" in arch


def _split(arch: str) -> tuple[str, str]:
    where, _, name = arch.rpartition(":")  # rpartition: a Windows drive letter keeps its colon
    if not where or not name.isidentifier():
        raise ArchError(f"--arch {arch}: expected module:function or path/to/file.py:function")
    return where, name


def _is_file(where: str) -> bool:
    return where.endswith(".py") or "/" in where or "\\" in where


def canonical_arch(arch: str) -> str:
    """The arch as trials record it: a file path made absolute (against the current directory),
    anything else unchanged."""
    if not is_user_arch(arch):
        return arch
    where, name = _split(arch)
    if not _is_file(where):
        return arch
    return f"{Path(where).expanduser().resolve()}:{name}"


def _why(e: BaseException) -> str:
    """``Type: first line of the message``, short enough for a one-line error."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__


def _load_file(arch: str, where: str):
    path = Path(where).expanduser().resolve()
    if not path.is_file():
        raise ArchError(f"--arch {arch}: no file {path}")
    # one module name per path: loading the file again reuses it, two files never collide
    mod_name = f"_user_arch_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ArchError(f"--arch {arch}: cannot load {path} as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module  # registered first, as an import does (dataclasses need it)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the user's file may fail in any way; report it in one line
        del sys.modules[mod_name]
        raise ArchError(f"--arch {arch}: cannot load file {path} ({_why(e)})") from e
    return module


def load_factory(arch: str) -> Callable[[DataSpec], nn.Module]:
    """The factory named by ``arch`` (imported, or loaded from its file)."""
    where, name = _split(arch)
    if _is_file(where):
        module = _load_file(arch, where)
    else:
        try:
            module = importlib.import_module(where)
        except Exception as e:  # the user's module may fail in any way; report it in one line
            raise ArchError(f"--arch {arch}: cannot import module {where!r} ({_why(e)})") from e
    if not hasattr(module, name):
        raise ArchError(f"--arch {arch}: {where} has no function {name!r}")
    factory = getattr(module, name)
    if not callable(factory):
        raise ArchError(f"--arch {arch}: {where}.{name} is not callable ({type(factory).__name__})")
    return factory


def make_user_classifier(arch: str, spec: DataSpec) -> nn.Module:
    """``factory(spec)`` for the factory named by ``arch``; checks only that it is an nn.Module
    (``check_arch`` tries a forward pass)."""
    factory = load_factory(arch)
    _, name = _split(arch)
    try:
        model = factory(spec)
    except Exception as e:  # the user's factory may fail in any way; report it in one line
        raise ArchError(f"--arch {arch}: {name}(spec) raised {_why(e)}") from e
    if not isinstance(model, nn.Module):
        raise ArchError(f"--arch {arch}: {name}(spec) returned {type(model).__name__}, not a torch.nn.Module")
    return model


def check_arch(arch: str, spec: DataSpec, method: str = "") -> None:
    """Raise ArchError (one line) unless ``arch`` builds a model that maps a batch of two random
    [0, 1] images of ``spec``'s shape to (2, classes) logits, with trainable parameters, and has
    what ``method`` needs (``NEEDS_FEATURES``). Built-in names pass unchecked."""
    if not is_user_arch(arch):
        return
    model = make_user_classifier(arch, spec).eval()
    if not any(p.requires_grad for p in model.parameters()):
        raise ArchError(f"--arch {arch}: the model has no trainable parameters")
    # read before any forward: a lazy layer would only now report its true width
    head_width = getattr(getattr(model, "head", None), "in_features", None)
    shape = (2, spec.channels, spec.size, spec.size)
    with torch.random.fork_rng(devices=[]), torch.no_grad():  # leaves the caller's random stream alone
        x = torch.rand(shape)
        try:
            logits = model(x)
        except Exception as e:  # the user's forward may fail in any way; report it in one line
            raise ArchError(f"--arch {arch}: forward on images of shape {tuple(shape)} raised {_why(e)}") from e
        if not isinstance(logits, torch.Tensor):
            raise ArchError(f"--arch {arch}: forward returned {type(logits).__name__}, not a tensor of logits")
        if tuple(logits.shape) != (2, spec.classes):
            raise ArchError(f"--arch {arch}: forward on images of shape {tuple(shape)} gave shape "
                            f"{tuple(logits.shape)}; expected (2, {spec.classes}) (batch, classes)")
        if method in NEEDS_FEATURES:
            problem = _features_problem(model, x, logits, head_width)
            if problem:
                raise ArchError(f"--arch {arch}: {method} needs {FEATURES_RULE}, since "
                                f"{NEEDS_FEATURES[method]}; {problem}")


def _features_problem(model: nn.Module, x: torch.Tensor, logits: torch.Tensor, head_width) -> str:
    """What is wrong with the model's features/head pair ('' if nothing)."""
    if not callable(getattr(model, "features", None)):
        return "the model has no features method"
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear):
        return f"model.head is {'missing' if head is None else 'a ' + type(head).__name__}, not an nn.Linear"
    try:
        h = model.features(x)
    except Exception as e:  # the user's method may fail in any way; report it in one line
        return f"features(x) raised {_why(e)}"
    if not isinstance(h, torch.Tensor) or h.dim() != 2 or h.shape[0] != x.shape[0]:
        got = tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__
        return f"features(x) gave {got}, not (2, D)"
    if head_width != h.shape[1]:
        return f"head.in_features is {head_width} when built but features have D = {h.shape[1]}"
    seen = []
    hook = head.register_forward_hook(lambda _m, inp, _out: seen.append(inp[0]))
    try:
        model(x)
    finally:
        hook.remove()
    if not seen:
        return "forward never calls model.head"
    if seen[-1].shape != h.shape or not torch.allclose(seen[-1], h, **_TOLERANCE):
        return "forward calls model.head on something other than features(x)"
    if not torch.allclose(head(h), logits, **_TOLERANCE):
        return "model(x) differs from model.head(model.features(x))"
    return ""
