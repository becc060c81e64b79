"""Speed options of a trial's training loop, all off by default and each correct on CPU:

* ``bf16`` — ``torch.autocast(dtype=bfloat16)`` behind ``StepContext.autocast``: the forward
  passes a defense wraps in ``ctx.autocast()`` run their matrix work in bf16 (on Ampere/Hopper
  tensor cores about 2× fp32-with-TF32 for conv nets). Normalizing flows opt out inside the
  defense; the per-epoch and final evaluation attacks never run under it (fp32), so reported
  robustness is not a mixed-precision artefact.
* ``channels_last`` — NHWC memory format for the trained networks and their input batches;
  cuDNN's bf16 convolutions are NHWC-native, so this removes layout transposes (10–30% more on
  GPUs with bf16; on CPU it is correct but seldom faster).
* ``compile`` — ``nn.Module.compile()`` in place (state_dict keys unchanged, so checkpoints
  stay loadable without it); worth it for runs of many epochs, it costs tens of seconds of
  compilation per trial and per new input shape.
* ``loader_workers`` — DataLoader worker processes (persistent across epochs, pinned host
  memory on CUDA so copies overlap compute with ``non_blocking``).
* ``data_on_device`` — hold the uint8 training split on the device and draw batches there:
  no host→device copy per step, which dominates the step time of small models on small images.
  ``auto`` turns it on for data sets up to ``AUTO_DEVICE_BYTES`` on CUDA (``digits``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

# glibc malloc in every Ray worker of a search (set through the job's runtime environment, where
# the user has not set them): allocations under 32 MiB (every activation and gradient of the models
# here) come from the heap and freed memory is kept rather than returned to the OS. With glibc's
# defaults a fresh worker process maps and unmaps large tensors while its dynamic threshold adapts
# and then trims the heap, so pages are faulted in again every step: on the 2-core reference
# machine that cost PGD-AT epochs 15-20% in the Train worker against the same loop elsewhere
# (bench/ray_overhead.py). 32 MiB is the ceiling glibc's own dynamic threshold moves to.
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2 ** 20), "MALLOC_TRIM_THRESHOLD_": str(2 ** 30)}


def allocator_env(environ: Mapping[str, str]) -> dict[str, str]:
    """``ALLOCATOR_ENV``, unless ``environ`` already tunes glibc malloc (the user's choice wins)."""
    if any(k.startswith("MALLOC_") or k == "GLIBC_TUNABLES" for k in environ):
        return {}
    return dict(ALLOCATOR_ENV)


DATA_ON_DEVICE = ("auto", "on", "off")
AUTO_DEVICE_BYTES = 64 * 2 ** 20  # training split (uint8) held on the GPU when "auto"


@dataclass(frozen=True)
class PerfOptions:
    bf16: bool = False
    channels_last: bool = False
    compile: bool = False
    loader_workers: int = 0  # DataLoader worker processes; 0 = load in the training process
    data_on_device: str = "auto"  # "auto" | "on" | "off"

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "PerfOptions":
        """The options present in ``values`` (an experiment config as a dict); absent keys keep
        their defaults, so experiments recorded before an option existed still load."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: values[k] for k in names if k in values})


def autocast(device: torch.device, opts: PerfOptions) -> Callable[[], contextlib.AbstractContextManager]:
    """The factory behind ``StepContext.autocast``: bf16 autocast on the device's type, or a no-op."""
    if not opts.bf16:
        return contextlib.nullcontext
    device_type = torch.device(device).type
    return lambda: torch.autocast(device_type=device_type, dtype=torch.bfloat16)


def prepare_module(module: nn.Module, opts: PerfOptions) -> nn.Module:
    """Channels-last and/or compile a trained network in place (same object, same state_dict keys)."""
    if opts.channels_last:
        module.to(memory_format=torch.channels_last)
    if opts.compile:
        module.compile()
    return module


def prepare_input(x: torch.Tensor, opts: PerfOptions) -> torch.Tensor:
    if opts.channels_last and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def use_device_data(opts: PerfOptions, device: torch.device, nbytes: int) -> bool:
    if opts.data_on_device == "on":
        return True
    if opts.data_on_device == "off":
        return False
    return torch.device(device).type == "cuda" and nbytes <= AUTO_DEVICE_BYTES


class DeviceBatches:
    """Shuffled mini-batches drawn from tensors already on the device, sharded across ranks like
    ``DistributedSampler`` (one permutation per epoch from ``seed + epoch``, identical on every
    rank; rank r takes every world-th index), so every rank runs the same number of steps;
    ``drop_last`` drops each rank's last incomplete batch, as the DataLoader flag does."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, rank: int = 0, world: int = 1,
                 seed: int = 0, drop_last: bool = False):
        self.x, self.y = x, y
        self.batch_size, self.rank, self.world, self.seed = batch_size, rank, world, seed
        self.drop_last = drop_last
        self.epoch = 0
        self.per_rank = math.ceil(len(y) / world)  # padded, as DistributedSampler pads

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.drop_last:
            return self.per_rank // self.batch_size
        return math.ceil(self.per_rank / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(len(self.y), generator=g)
        need = self.per_rank * self.world
        if need > len(perm):  # pad by wrapping around, as DistributedSampler does
            perm = torch.cat([perm, perm[:need - len(perm)]])
        idx = perm[:need][self.rank::self.world].to(self.x.device)
        for i in range(0, len(self) * self.batch_size, self.batch_size):
            j = idx[i:i + self.batch_size]
            yield self.x[j], self.y[j]


def make_loader(x: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device, opts: PerfOptions,
                rank: int = 0, world: int = 1, seed: int = 0):
    """Training batches of (uint8 images, labels) for one rank: ``DeviceBatches`` when the split
    is held on the device, else a DataLoader (pinned memory on CUDA, persistent workers)."""
    drop_last = len(y) >= batch_size * world
    if use_device_data(opts, device, x.numel() * x.element_size()):
        return DeviceBatches(x.to(device), y.to(device), batch_size, rank, world, seed, drop_last)
    data = TensorDataset(x, y)
    workers = opts.loader_workers
    common = dict(batch_size=batch_size, drop_last=drop_last, num_workers=workers,
                  persistent_workers=workers > 0, pin_memory=torch.device(device).type == "cuda")
    if world > 1:
        return DataLoader(data, sampler=DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True,
                                                           seed=seed), **common)
    return DataLoader(data, shuffle=True, **common)
