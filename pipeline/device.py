"""Device and dtype selection: CUDA (bf16 where supported) when a GPU is attached, CPU fp32 otherwise."""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
    device = torch.device("cuda" if preference == "auto" else preference)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return DeviceChoice(device, dtype)
