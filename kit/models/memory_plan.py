"""What a training run will need, said before it starts: the RAM of what it keeps per image, the
working set of its network, and its on-disk cache. ``kit.train`` prints the plan and logs it
(``memory_plan`` in ``train.log``); every family says its own
(:meth:`kit.models.family.ModelFamily.memory_plan`).

The estimate is a sum (MB = 2**20 bytes):

* ``data_mb``: the records the run keeps (:func:`records_mb`: ids, paths, RLE strings). Images,
  masks and targets are read per batch, never held;
* ``libs_mb``: the process with its libraries imported (torch, torchvision, cellpose, ...),
  :data:`LIBS_MB`;
* ``params_mb``: the network's float32 weights, their gradients and the optimizer's slots
  (AdamW 2, SGD with momentum 1);
* ``activations_mb``: the largest forward (+ backward) pass of the run: pixels in one batch
  times the bytes per pixel of that family and pass (constants in the family's ``memory``
  module, fitted to the peak RSS of single passes and of whole runs on CPU;
  ``python -m benchmarks.memory`` prints its runs' estimates next to the measurements). On CUDA the weights and activations live in GPU memory: RAM is then
  ``libs_mb + data_mb`` and the rest is reported as GPU memory.

It is an estimate of the order of magnitude, for choosing a batch size or a machine; the cache
size is exact.
"""
from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

__all__ = ["MemoryPlan", "records_mb", "params_mb", "MB"]

MB = 2 ** 20
# Resident set of a kit.train process of each family once its libraries are imported and its
# data read, before the network is built (CPU build, this kit's pins; train.log's rss_mb), MB.
LIBS_MB = {"baseline": 280.0, "cellpose": 750.0, "maskrcnn": 900.0, "detectron2": 1000.0}


@dataclass(frozen=True)
class MemoryPlan:
    """A run's estimated memory (see the module docstring; all sizes in MB)."""

    family: str
    device: str
    data_mb: float
    libs_mb: float
    params_mb: float = 0.0
    activations_mb: float = 0.0
    basis: str = ""                 # what the activation estimate is for (batch x pixels)
    cache_mb: float = 0.0           # on-disk cache the run reads (0: none)
    cache_dir: str | None = None
    cache_images: int = 0

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def peak_mb(self) -> float:
        """Estimated peak RSS: everything in RAM on CPU; libraries and data on CUDA."""
        gpu = self.params_mb + self.activations_mb if self.on_gpu else 0.0
        return self.data_mb + self.libs_mb + self.params_mb + self.activations_mb - gpu

    @property
    def gpu_mb(self) -> float:
        return self.params_mb + self.activations_mb if self.on_gpu else 0.0

    def cache_state(self) -> dict:
        """``{"cache_present_mb", "disk_free_mb"}`` of the cache folder now (None where unknown)."""
        if not self.cache_dir:
            return {"cache_present_mb": None, "disk_free_mb": None}
        d = Path(self.cache_dir)
        present = sum(p.stat().st_size for p in d.rglob("*") if p.is_file()) / MB if d.is_dir() else 0.0
        probe = next((p for p in [d, *d.parents] if p.exists()), None)
        free = shutil.disk_usage(probe).free / MB if probe is not None else None
        return {"cache_present_mb": round(present, 1), "disk_free_mb": None if free is None else round(free, 1)}

    def to_dict(self) -> dict:
        return {**asdict(self), "peak_mb": round(self.peak_mb, 1), "gpu_mb": round(self.gpu_mb, 1)}

    def summary(self, cache_state: dict | None = None) -> str:
        """Two or three lines for the terminal (``cache_state``: :meth:`cache_state`'s result
        when the caller has it, else read now)."""
        lines = [f"memory plan ({self.family}, {self.device}): peak RSS ~{_size(self.peak_mb)} = "
                 f"libraries {_size(self.libs_mb)} + data held {_size(self.data_mb)}"
                 + ("" if self.on_gpu else f" + network {_size(self.params_mb)} + activations "
                    f"{_size(self.activations_mb)} ({self.basis})")]
        if self.on_gpu:
            lines.append(f"  GPU memory ~{_size(self.gpu_mb)} (network {_size(self.params_mb)} + "
                         f"activations {_size(self.activations_mb)}, {self.basis})")
        if self.cache_dir:
            st = cache_state or self.cache_state()
            lines.append(f"  target cache: {_size(self.cache_mb)} for {self.cache_images} images in "
                         f"{self.cache_dir} (holds {_size(st['cache_present_mb'] or 0.0)} now; "
                         + (f"{_size(st['disk_free_mb'])} free on its disk)" if st["disk_free_mb"] is not None
                            else "free space unknown)"))
        return "\n".join(lines)


def _size(mb: float) -> str:
    return f"{mb / 1024:.1f} GB" if mb >= 1024 else f"{mb:.0f} MB"


def records_mb(records: Iterable) -> float:
    """RAM of :class:`kit.data.ImageRecord` objects: per RLE string 49 bytes of str header +
    its characters + an 8-byte tuple slot; ~600 bytes per record (object, id, path, shape)."""
    total = 0
    for r in records:
        total += 600 + sum(57 + len(s) for s in r.rles)
    return total / MB


def params_mb(n_params: int, optimizer: str) -> float:
    """float32 weights + gradients + optimizer slots (adam/adamw 2, sgd 1) of ``n_params``."""
    slots = 2 if optimizer.lower().startswith("adam") else 1
    return n_params * 4 * (2 + slots) / MB
