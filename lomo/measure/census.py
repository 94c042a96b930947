"""A census of live tensor memory by category, sampled at the peak of a training step.

`MemoryCensus` is a `TorchDispatchMode`: it sees every tensor an operator creates (forward,
backward and optimizer alike), counts the bytes of each distinct storage while it is alive
(a weak reference tells it when the storage is freed), and files each storage under one
category:

- parameters: storages of the model's parameters;
- optimizer_states: tensors the optimizer keeps between steps (fp32 master weights, moments);
- gradients: any storage that has been a parameter's `.grad` (tagged by a post-accumulate-grad
  hook registered before the optimizer's own hooks, so LOMO's gradient counts while its hook
  updates the weight, even though the hook has already set `.grad` to None);
- activations: tensors saved for backward (`torch.autograd.graph.saved_tensors_hooks`);
- other: everything else (temporaries such as logits, in-flight activation gradients, the fp32
  copy of a gradient inside an update).

A storage belongs to the first category in that order that claims it. After every operator
the census compares the total with its peak; at a new peak it keeps the breakdown. It also
keeps each category's own maximum over the step.

Counting is of tensor bytes, independent of the device: it works on CPU and on GPU. The
allocator's view (caching, fragmentation, rounding) is measured separately: `ProcessPeak`.
Activation checkpointing must be reentrant (`use_reentrant=True`) for the recomputed
activations to be seen: the non-reentrant form stores them through its own hooks.
"""

import weakref
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

CATEGORIES = ("parameters", "optimizer_states", "gradients", "activations", "other")
_RANK = {category: rank for rank, category in enumerate(CATEGORIES)}


class MemoryCensus(TorchDispatchMode):
    """Live tensor bytes by category; `peak`, `at_peak` and `category_peak` after the `with`.

    Create it *before* the optimizer (its gradient hooks must run before the optimizer's),
    and pass the optimizer's state tensors on entry with `track_state`.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.current = dict.fromkeys(CATEGORIES, 0)
        self.category_peak = dict.fromkeys(CATEGORIES, 0)
        self.at_peak = dict.fromkeys(CATEGORIES, 0)
        self.peak = 0
        self._storages: dict[int, list] = {}  # id(storage) -> [weakref, category, bytes]
        self._active = False
        self._saved_hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._grad_handles = [
            p.register_post_accumulate_grad_hook(self._on_grad)
            for p in model.parameters()
            if p.requires_grad
        ]

    def track_state(self, tensors: list[Tensor]) -> None:
        """File tensors that already exist (e.g. optimizer state) under optimizer_states."""
        for tensor in tensors:
            self._tag(tensor, "optimizer_states")

    def remove_hooks(self) -> None:
        for handle in self._grad_handles:
            handle.remove()

    def _tag(self, tensor: Tensor, category: str) -> None:
        if not isinstance(tensor, Tensor) or tensor.is_meta or tensor.layout != torch.strided:
            return
        storage = tensor.untyped_storage()
        entry = self._storages.get(id(storage))
        if entry is None:
            key = id(storage)
            ref = weakref.ref(storage, lambda _, key=key: self._release(key))
            entry = self._storages[key] = [ref, category, storage.nbytes()]
            self.current[category] += entry[2]
        elif _RANK[category] < _RANK[entry[1]]:
            self.current[entry[1]] -= entry[2]
            self.current[category] += entry[2]
            entry[1] = category

    def _release(self, key: int) -> None:
        _, category, nbytes = self._storages.pop(key)
        self.current[category] -= nbytes

    def _sample(self) -> None:
        total = sum(self.current.values())
        if total > self.peak:
            self.peak = total
            self.at_peak = dict(self.current)
        for category, nbytes in self.current.items():
            self.category_peak[category] = max(self.category_peak[category], nbytes)

    def _pack(self, tensor: Tensor) -> Tensor:
        self._tag(tensor, "activations")
        return tensor

    def _on_grad(self, param: Tensor) -> None:
        if self._active:
            self._tag(param.grad, "gradients")
            self._sample()

    def __enter__(self) -> "MemoryCensus":
        for param in self.model.parameters():
            self._tag(param, "parameters")
            if param.grad is not None:
                self._tag(param.grad, "gradients")
        for buffer in self.model.buffers():
            self._tag(buffer, "other")
        self._active = True
        self._saved_hooks.__enter__()
        super().__enter__()
        self._sample()
        return self

    def __exit__(self, *args: Any) -> None:
        super().__exit__(*args)
        self._saved_hooks.__exit__(*args)
        self._active = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            self._tag(tensor, "other")
        self._sample()
        return out


class ProcessPeak:
    """The allocator's peak during a `with` block, in bytes.

    GPU: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`. CPU: the process's
    resident-set high-water mark (Linux VmHWM, reset through /proc/self/clear_refs) minus
    `baseline`, the resident size of the bare process measured before the model existed.
    """

    def __init__(self, device: torch.device, baseline: int) -> None:
        self.device = device
        self.baseline = baseline
        self.peak = 0

    def __enter__(self) -> "ProcessPeak":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current resident size
        return self

    def __exit__(self, *args: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self.peak = proc_status_bytes("VmHWM") - self.baseline


def proc_status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM, ...) in bytes (Linux only)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field} field")
