"""The torch.distributed set-up of a trial's Ray Train workers, as a backend whose module does
not import torch.

Ray's ``TorchConfig`` lives in ``ray.train.torch``, which imports torch at the top; the Train
controller (a fresh process per trial) deserializes the backend config and so spent ≈ 1.8 s of
every trial's start-up importing torch before it launched a single worker. Here the controller
only holds references to the functions below; each runs on a worker (which imports torch for
training anyway) and calls Ray's own torch set-up, so the process group, the environment
variables (``MASTER_ADDR``, ``LOCAL_RANK``, …), NCCL's error handling and the CUDA device
sharing are Ray's.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import ray
from ray.train.backend import Backend, BackendConfig
from ray.train.constants import DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S, TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S


@dataclass
class LeanTorchConfig(BackendConfig):
    """``ray.train.torch.TorchConfig``'s defaults: NCCL when workers have GPUs, else gloo."""

    timeout_s: int = 1800

    @property
    def backend_cls(self):
        return _LeanTorchBackend

    @property
    def train_func_context(self):
        return _cuda_device

    @property
    def framework(self):
        from ray.train.v2._internal.util import TrainingFramework

        return TrainingFramework.TORCH

    def to_dict(self) -> dict:
        return {"backend": None, "init_method": "env", "timeout_s": self.timeout_s}


def process_group_backend(resources_per_worker: dict) -> str:
    """NCCL for workers that hold GPUs, gloo on CPU (as ``TorchTrainer`` chooses)."""
    return "nccl" if resources_per_worker.get("GPU", 0) > 0 else "gloo"


class _LeanTorchBackend(Backend):
    share_cuda_visible_devices: bool = True  # NCCL needs every local GPU visible to each rank

    def on_start(self, worker_group, backend_config: LeanTorchConfig):
        from ray.train._internal.utils import get_address_and_port

        backend = process_group_backend(worker_group.get_resources_per_worker())
        addr, port = worker_group.execute_single(0, get_address_and_port)
        worker_group.execute(_set_env, addr=addr, port=port)
        ray.get([worker_group.execute_single_async(i, _init_process_group, backend=backend, world_rank=i,
                                                   world_size=len(worker_group), timeout_s=backend_config.timeout_s)
                 for i in range(len(worker_group))])

    def on_shutdown(self, worker_group, backend_config: LeanTorchConfig):
        from ray._private import ray_constants
        from ray.exceptions import GetTimeoutError

        futures = worker_group.execute_async(_shutdown, destroy_process_group=len(worker_group) > 1)
        timeout_s = ray_constants.env_integer(TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S,
                                              DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S)
        try:
            ray.get(futures, timeout=timeout_s)
        except GetTimeoutError:  # as Ray's: a hung shutdown must not keep the trial's result from the driver
            logging.getLogger(__name__).warning("torch process group shutdown timed out after %s s", timeout_s)


# ---------------------------------------------------------------- run on the workers

def _set_env(addr: str, port: int) -> None:
    import os

    from ray.train.torch.config import _set_torch_distributed_env_vars

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = addr, str(port)
    _set_torch_distributed_env_vars()


def _init_process_group(backend: str, world_rank: int, world_size: int, timeout_s: int) -> None:
    from ray.train.torch.config import _setup_torch_process_group

    _setup_torch_process_group(backend=backend, world_rank=world_rank, world_size=world_size,
                               init_method="env://", timeout_s=timeout_s)


def _shutdown(destroy_process_group: bool) -> None:
    from ray.train.torch.config import _shutdown_torch

    _shutdown_torch(destroy_process_group=destroy_process_group)


def _cuda_device():
    """Ray's ``TorchConfigContextManager``, imported on the worker: each worker's current CUDA
    device is its own."""
    from ray.train.torch.config import TorchConfigContextManager

    return TorchConfigContextManager()
