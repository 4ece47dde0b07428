"""Device and dtype selection: CUDA (bf16 where supported) when a GPU is attached, CPU fp32 otherwise.

On a machine with several GPUs, "auto" gives each process its own GPU: the `gpu` pool lets N
GPU steps run at once (one per GPU, `dagster instance concurrency set gpu N`), and each step
process claims the first GPU no other process holds (an flock on `gpu-<index>.lock` in
$RLHF_GPU_LOCK_DIR, default the temp dir), released when the process exits. Processes started by
`accelerate launch` (LOCAL_RANK set) leave placement to accelerate.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

GPU_LOCK_DIR_ENV = "RLHF_GPU_LOCK_DIR"
_claimed_gpu: dict[str, int] = {}  # this process's GPU index, and the lock file descriptor it holds


@dataclass(frozen=True)
class DeviceChoice:
    device: torch.device
    dtype: torch.dtype

    @property
    def use_bf16(self) -> bool:
        return self.dtype == torch.bfloat16


def select_device(preference: str = "auto") -> DeviceChoice:
    """`preference` is "auto", "cpu" or "cuda" (or "cuda:N")."""
    if preference not in ("auto", "cpu") and not preference.startswith("cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {preference!r}")
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return DeviceChoice(torch.device("cpu"), torch.float32)
    if not torch.cuda.is_available():
        raise RuntimeError(f"device {preference!r} was requested but no CUDA GPU is available")
    if preference == "auto":
        index = claim_gpu_index(torch.cuda.device_count()) if "LOCAL_RANK" not in os.environ else None
        device = torch.device("cuda" if index is None else f"cuda:{index}")
    else:
        device = torch.device(preference)
    if device.index is not None:
        # The HF Trainer and accelerate put models on the *current* CUDA device, whatever index we chose.
        torch.cuda.set_device(device)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return DeviceChoice(device, dtype)


def claim_gpu_index(n_devices: int, lock_dir: str | os.PathLike[str] | None = None) -> int | None:
    """This process's GPU among `n_devices`: the first one no other live process has claimed.

    None with a single GPU (nothing to choose). When every GPU is claimed (more GPU steps than
    GPUs, i.e. a pool limit above the GPU count), the least-loaded choice is unknowable here, so
    the process shares GPU 0.
    """
    if n_devices <= 1:
        return None
    if "index" in _claimed_gpu:
        return _claimed_gpu["index"]
    directory = Path(lock_dir or os.environ.get(GPU_LOCK_DIR_ENV) or tempfile.gettempdir())
    directory.mkdir(parents=True, exist_ok=True)
    for index in range(n_devices):
        descriptor = os.open(directory / f"gpu-{index}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            continue
        # Held, not closed: the kernel releases the lock when this process exits.
        _claimed_gpu.update(index=index, descriptor=descriptor)
        return index
    return 0


@contextmanager
def torch_cpu_threads(n_threads: int) -> Iterator[None]:
    """Run with `n_threads` torch intra-op threads (0: unchanged), restoring the previous setting after."""
    previous = torch.get_num_threads()
    if n_threads:
        torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
