"""How many images an attack may push through a predictor at once: a memory plan measured on
the predictor itself.

Attacks stack a randomized predictor's EOT copies into one batch, and a predictor may average
several draws inside one call (atop's ``n_masks``), so the memory of one forward+backward grows
with images × calls × draws per call. At 32×32 a purifier plus a ResNet keeps tens of MB per
image-call for the backward pass; a fixed number of images per forward either runs out of
memory or wastes a large device. The plan:

1. **Cost.** A probe runs the predictor's forward and the backward to its input (what every
   attack step does) on 2 and then 4 stacked copies of one image and measures the peak of each
   (``peak_bytes``). The difference is the cost of 2 image-calls; the rest is a fixed cost
   (weights transformed per call, workspaces). Draws per call are inside the call, so they are
   in the cost; EOT copies are image-calls. The probe leaves the random streams as it found them.
2. **Budget.** ``--eval-memory`` (``parse_memory``: "2GB", "512MB"), capped by what the device
   has: on CUDA 80% of its free memory plus what this process's caching allocator holds unused;
   on CPU 80% of the available RAM. Without the flag: that capacity on CUDA, and a quarter of
   the available RAM on CPU, where several evaluations share the machine's memory.
3. **Chunk.** Image-calls per forward/backward = (90% of the budget − fixed − the attack's own
   state for ``held`` images) / cost per image-call, between 1 and ``core.MAX_BATCH``.
   ``raysearch.attacks.core`` splits every stacked forward, and backs each piece of an EOT
   gradient up on its own, so one piece's graph is all that is alive at a time.

Peak memory, measured (``peak_bytes``): on CUDA the allocator's own peak
(``torch.cuda.max_memory_allocated`` after a reset, less what was allocated before; resets the
device's peak statistics). On CPU, where PyTorch keeps no such count, a dispatch mode
(``PeakTracker``) sees every tensor an operator returns, forward and backward alike, adds its
storage's bytes when the storage first appears and subtracts them when the storage is freed;
its peak is the most tensor memory alive at once. Storages that existed before (weights, the
inputs) are not counted. It misses scratch memory a kernel allocates and frees inside itself,
which is why the budget keeps a margin; it costs a Python call per operator, nothing for a
probe of a few images.
"""
from __future__ import annotations

import contextlib
import logging
import math
import re
import weakref
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from raysearch.attacks import core

log = logging.getLogger(__name__)

SAFETY = 0.8  # of the device's free memory: room for kernel workspaces, fragmentation, other users
FILL = 0.9  # of the budget the planned chunks aim at: room for the losses, logits and scores
CPU_SHARE = 0.25  # of the available RAM, the default budget on CPU (evaluations run side by side)
PROBE = (2, 4)  # image-calls of the two probes; their difference prices one image-call
STATE_COPIES = 16  # image-sized tensors an attack keeps per image (iterates, best points, gradients)
UNITS = {"": 1, "b": 1, "k": 2 ** 10, "m": 2 ** 20, "g": 2 ** 30, "t": 2 ** 40}
SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


class MemorySizeError(ValueError):
    """A bad ``--eval-memory`` value; the message is one line for the user."""


def parse_memory(text: str | int | None) -> int | None:
    """Bytes of a size such as "2GB", "512MB", "1.5g" or "300MiB" (units are powers of 1024;
    a bare number is bytes); None for None, "" or "auto" (plan from the device)."""
    if text is None or (isinstance(text, str) and text.strip().lower() in ("", "auto")):
        return None
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        m = SIZE.match(str(text))
        if not m:
            raise MemorySizeError(f"--eval-memory: expected a size such as 2GB or 512MB, got {text!r}")
        value = float(m.group(1)) * UNITS[m.group(2).lower()]
    if not (math.isfinite(value) and value >= 1):
        raise MemorySizeError(f"--eval-memory: must be a positive size, got {text!r}")
    return int(value)


def check_memory(text: str | None) -> str:
    """The flag's value as stored in a config ("" for auto), after checking that it parses."""
    return "" if parse_memory(text) is None else str(text).strip()


class PeakTracker(TorchDispatchMode):
    """Tensor memory alive at once while the mode is active: every storage an operator returns
    counts from its first appearance until it is freed (``peak``, ``current`` in bytes).
    ``known``: tensors whose storages existed before and are not counted (inputs, weights)."""

    def __init__(self, known: Iterable[torch.Tensor] = ()):
        super().__init__()
        self.current = self.peak = 0
        self._live: dict[int, int] = {}
        self._known = {id(t.untyped_storage()) for t in known}

    def _freed(self, key: int) -> None:
        self.current -= self._live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.layout != torch.strided:
                continue  # sparse and other layouts have no single storage (and no place in attacks)
            storage = t.untyped_storage()
            key = id(storage)
            if key in self._live or key in self._known:
                continue  # a view or an in-place result of a storage already counted
            self._live[key] = storage.nbytes()
            weakref.finalize(storage, self._freed, key)
            self.current += self._live[key]
            self.peak = max(self.peak, self.current)
        return out


def _tensors_of(model: Callable) -> list[torch.Tensor]:
    if isinstance(model, torch.nn.Module):
        return [*model.parameters(), *model.buffers()]
    return []


def peak_bytes(fn: Callable[[], object], device: torch.device, known: Iterable[torch.Tensor] = ()) -> int:
    """Peak memory ``fn()`` allocates on ``device`` above what was allocated when it started."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return max(0, torch.cuda.max_memory_allocated(device) - base)
    with PeakTracker(known) as tracker:
        fn()
    return tracker.peak


def _step(model: Callable, x: torch.Tensor, copies: int = 1) -> None:
    """What an attack step does to the predictor: a forward of ``copies`` stacked copies of the
    images and the backward to the images."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        torch.autograd.grad(model(core._stacked(x, copies)).float().sum(), x)


@dataclass(frozen=True)
class Cost:
    """Memory of one forward+backward: ``fixed`` + ``per_image`` × image-calls, in bytes."""

    per_image: int
    fixed: int


def measure(models: Iterable[Callable], x_sample: torch.Tensor) -> Cost:
    """The cost of a forward+backward, the larger per-image and fixed costs of ``models`` (a
    predictor and its BPDA pipeline), from probes on ``PROBE`` stacked copies of
    ``x_sample[0]`` (as attacks stack EOT copies); the random streams are left as they were."""
    x0 = x_sample[:1].detach()
    devices = [x0.device] if x0.device.type == "cuda" else []
    per, fixed = 1, 0
    for model in models:
        peaks = []
        for n in PROBE:
            with torch.random.fork_rng(devices=devices):
                peaks.append(peak_bytes(lambda: _step(model, x0, n), x0.device, known=[x0, *_tensors_of(model)]))
        slope = math.ceil((peaks[1] - peaks[0]) / (PROBE[1] - PROBE[0]))
        per, fixed = max(per, slope), max(fixed, peaks[1] - PROBE[1] * slope)
    return Cost(per, fixed)


def available_ram() -> int:
    """Bytes of RAM available to a new allocation (psutil when installed, else /proc/meminfo)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    raise RuntimeError("cannot tell the available RAM; pass --eval-memory")


def capacity(device: torch.device) -> int:
    """Bytes the evaluation can take on ``device`` at most: SAFETY × its free memory (on CUDA
    counting what this process's allocator holds unused)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(SAFETY * free)
    return int(SAFETY * available_ram())


def budget_bytes(device: torch.device, eval_memory: str | int | None = None) -> int:
    """The plan's budget: ``eval_memory`` capped by the device's capacity; without it the
    capacity on CUDA and CPU_SHARE of the available RAM on CPU."""
    asked = parse_memory(eval_memory)
    cap = capacity(device)
    if asked is not None:
        return min(asked, cap)
    return cap if torch.device(device).type == "cuda" else int(CPU_SHARE * available_ram())


def chunk_for(cost: Cost, budget: int, held_bytes: int = 0, limit: int = core.MAX_BATCH) -> int:
    """Image-calls per forward/backward that fit FILL × ``budget`` bytes beside ``held_bytes``
    of attack state: at least 1, at most ``limit`` (beyond a few thousand images a forward gains
    no throughput)."""
    room = FILL * budget - cost.fixed - held_bytes
    return int(min(limit, max(1, room // max(1, cost.per_image))))


@dataclass(frozen=True)
class Plan:
    """A memory plan: ``chunk`` image-calls per forward/backward, from ``cost`` and ``budget``."""

    chunk: int
    cost: Cost
    budget: int
    held_bytes: int

    def describe(self) -> str:
        return (f"{self.cost.per_image / 2 ** 20:.2f} MB per image-call (+{self.cost.fixed / 2 ** 20:.0f} MB fixed), "
                f"budget {self.budget / 2 ** 20:.0f} MB: {self.chunk} image-calls per forward")


def plan(pred, x_sample: torch.Tensor, eval_memory: str | int | None = None, held: int = 0) -> Plan:
    """The plan for attacking ``pred`` (a ``Predictor``, or a bare model) on images shaped like
    ``x_sample``, on their device; ``held``: images whose attack state is kept meanwhile (the
    attack's batch)."""
    models = [pred] if callable(pred) else [m for m in (pred.model, pred.bpda) if m is not None]
    cost = measure(models, x_sample)
    budget = budget_bytes(x_sample.device, eval_memory)
    held_bytes = held * x_sample[:1].nelement() * x_sample.element_size() * STATE_COPIES
    out = Plan(chunk_for(cost, budget, held_bytes), cost, budget, held_bytes)
    if cost.fixed + held_bytes + cost.per_image > FILL * budget:
        log.warning("evaluation memory: one image-call needs %.0f MB, over the budget of %.0f MB; "
                    "attacking one at a time", (cost.fixed + held_bytes + cost.per_image) / 2 ** 20, budget / 2 ** 20)
    log.info("evaluation memory: %s", out.describe())
    return out


def plan_chunk(pred, x_sample: torch.Tensor, eval_memory: str | int | None = None, held: int = 0) -> int:
    """Image-calls per forward/backward for attacking ``pred`` (``plan``'s chunk)."""
    return plan(pred, x_sample, eval_memory, held).chunk


@contextlib.contextmanager
def planned(pred, x_sample: torch.Tensor, eval_memory: str | int | None = None, held: int = 0):
    """Attacks and scores inside the block stack at most the planned image-calls per forward
    (``core.batch_limit``); yields the ``Plan``."""
    p = plan(pred, x_sample, eval_memory, held)
    with core.batch_limit(p.chunk):
        yield p
