"""Gradient synchronisation for LOMO and AdaLomo: what a gradient hook does with this rank's
gradient. (Setting up the processes and ZeRO-3 models: `lomo.train.distributed`.)

`FusedOptimizer` calls one of these strategies from each parameter's gradient hook, with
constant work per parameter (no scan over the model, unlike the official code):

- `GradSync`: one process; nothing to communicate.
- `ReplicatedSync`: plain data parallelism. Every rank holds the whole model; one all-reduce
  sums the gradient and every rank applies the same update.
- `ZeRO3Sync`: DeepSpeed ZeRO-3. Every rank holds a 1/world flat partition of each parameter
  (`p.ds_tensor`), gathered by DeepSpeed only around the modules that use it. A reduce-scatter
  leaves each rank the sum of its own slice (half the traffic of an all-reduce); AdaLomo,
  whose factored second moment needs row and column means of the whole gradient, asks for the
  full sum (all-reduce) instead. Each rank then updates only its partition, in fp32.

Gradients are summed, not averaged: each rank's loss carries its share of the global batch's
tokens (`Runtime.loss_weights`), so each rank's gradient is its part of the global one and the
sum is the global gradient. With a mean over ranks each rank's gradient would have to be world
times its part, and an fp16 gradient (times the loss scale) can overflow there on one rank
where the global gradient, as one process computes it, does not.

Global statistics (the gradient norm, AdaLomo's parameter RMS) are sums of squares over each
rank's slice, summed over ranks with one scalar all-reduce, so every element counts once.
Every collective takes tensors on the process group's device (NCCL takes CUDA tensors only):
gradients and partitions live there already, and Python numbers (token counts, forward counts)
are reduced by `all_reduce_numbers`, the one place such tensors are made.
Rank arithmetic uses the rank within the parameter's own process group (not LOCAL_RANK, not the
world rank), so it holds on several nodes and inside a data-parallel subgroup.

ZeRO-3 with DeepSpeed 0.19, and why this is correct:
- `deepspeed.initialize(model=..., config=...)` without an optimizer builds an engine whose
  `optimizer` is a `DeepSpeedZeRoOffload`: it only installs the module hooks that gather a
  module's parameters before its forward and backward and release them after, and allocates
  no fp32 master weights, gradient buffers or optimizer state (those would cost 8+ bytes per
  parameter, which is what LOMO avoids).
- That engine refuses `engine.backward` (it needs a real optimizer), and the engine's own
  `forward` registers backward hooks that refuse a plain `tensor.backward()`. So we call the
  wrapped module (`engine.module(...)`) and a plain backward: the gather/release hooks live on
  the modules themselves and run as usual.
- In `register_post_accumulate_grad_hook`, `param.grad` is the full local gradient (the
  parameter is still gathered), so the hook can sum it and update `p.ds_tensor`, which is
  the copy DeepSpeed gathers from in the next forward.
- A module whose inputs need no gradient (the embedding) never fires its post-backward
  release, so its gathered, now stale copy would survive into the next forward:
  `end_of_backward` releases such leftovers. Parameters below
  `stage3_param_persistence_threshold` stay gathered for good (`ds_persist`); after updating
  their partition, `after_update` all-gathers it back into the resident copy.
- ZeRO-3 frees the gathered parameters that the graph saved, so a graph cannot be
  backpropagated twice: the norm pass and the update pass each run their own forward
  (`fresh_forward_per_pass`, handled by `FusedOptimizer.step`).
"""

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


class GradSync:
    """One process: the gradient is already the global one, and this process owns it all."""

    fresh_forward_per_pass = False  # True where a graph cannot be backpropagated twice

    def sum_over_ranks(
        self, param: Tensor, grad: Tensor, full: bool
    ) -> tuple[Tensor, Tensor | None]:
        """Sum `grad` over ranks: (the part of the sum that this rank updates, the whole sum
        if `full` else None)."""
        return grad, grad

    def shard(self, param: Tensor) -> Tensor:
        """The storage this rank updates: the parameter, or its flat ZeRO-3 partition."""
        return param

    def local(self, param: Tensor, full: Tensor) -> Tensor:
        """The part of a full-shape tensor that matches `shard(param)`."""
        return full

    def sum_over_shards(self, value: Tensor) -> Tensor:
        """The total of a statistic summed over each rank's shard."""
        return value

    def norm(self, shard: Tensor) -> Tensor:
        """The 2-norm of a tensor of which each rank holds the shard `shard`."""
        return torch.linalg.vector_norm(shard)

    def after_update(self, param: Tensor) -> None:
        pass

    def end_of_backward(self) -> None:
        pass


class ReplicatedSync(GradSync):
    """Plain data parallelism: full model on every rank, gradients summed by all-reduce.

    Every rank ends a step with the same weights, as long as they started with the same ones
    (`broadcast_parameters`)."""

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        self.group = group

    def sum_over_ranks(
        self, param: Tensor, grad: Tensor, full: bool
    ) -> tuple[Tensor, Tensor | None]:
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=self.group)
        return grad, grad


class ZeRO3Sync(GradSync):
    """DeepSpeed ZeRO-3: each rank updates its own flat partition `p.ds_tensor`.

    `engine` is a `deepspeed.initialize(model=..., config=...)` engine built without an
    optimizer (its `optimizer` is DeepSpeed's parameter-offload manager)."""

    fresh_forward_per_pass = True

    def __init__(self, engine: Any) -> None:
        from deepspeed.runtime.zero.parameter_offload import DeepSpeedZeRoOffload

        if not isinstance(engine.optimizer, DeepSpeedZeRoOffload):
            raise ValueError(
                "ZeRO3Sync needs a ZeRO stage 3 engine created without an optimizer "
                f"(deepspeed.initialize(model=..., config=...)); got {type(engine.optimizer)}"
            )
        self.offload = engine.optimizer
        # Partitioned parameters only: LoRA adapters added after partitioning stay replicated.
        self.params = [p for p in engine.module.parameters() if hasattr(p, "ds_tensor")]
        groups = {p.ds_process_group for p in self.params}
        if len(groups) != 1:
            raise ValueError("all parameters must be partitioned over one process group")
        (self.group,) = groups

    @staticmethod
    def _range(param: Tensor) -> tuple[int, int]:
        """[start, end) of this rank's partition in the flat parameter (padding excluded)."""
        size = param.ds_tensor.ds_numel
        start = min(size * dist.get_rank(group=param.ds_process_group), param.ds_numel)
        return start, min(start + size, param.ds_numel)

    def sum_over_ranks(
        self, param: Tensor, grad: Tensor, full: bool
    ) -> tuple[Tensor, Tensor | None]:
        start, end = self._range(param)
        if full:
            dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=param.ds_process_group)
            return grad.reshape(-1)[start:end], grad
        size = param.ds_tensor.ds_numel
        world = dist.get_world_size(group=param.ds_process_group)
        flat = grad.reshape(-1)
        if flat.numel() < size * world:  # ZeRO-3 pads the last partition
            flat = torch.nn.functional.pad(flat, (0, size * world - flat.numel()))
        part = grad.new_empty(size)
        dist.reduce_scatter_tensor(part, flat, op=dist.ReduceOp.SUM, group=param.ds_process_group)
        return part[: end - start], None

    def shard(self, param: Tensor) -> Tensor:
        start, end = self._range(param)
        return param.ds_tensor.narrow(0, 0, end - start)

    def local(self, param: Tensor, full: Tensor) -> Tensor:
        start, end = self._range(param)
        return full.reshape(-1)[start:end]

    def sum_over_shards(self, value: Tensor) -> Tensor:
        dist.all_reduce(value, group=self.group)
        return value

    def norm(self, shard: Tensor) -> Tensor:
        return self.sum_over_shards(torch.linalg.vector_norm(shard).square()).sqrt()

    def after_update(self, param: Tensor) -> None:
        refresh_persistent(param)

    def end_of_backward(self) -> None:
        from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

        self.offload.release_backward_leftovers()
        # A gathered copy left over now would be stale in the next forward: fail loudly.
        for param in self.params:
            if not param.ds_persist and param.ds_status != ZeroParamStatus.NOT_AVAILABLE:
                raise RuntimeError(f"still gathered after backward: {param.ds_summary()}")


def refresh_persistent(param: Tensor) -> None:
    """A ZeRO-3 parameter that stays gathered (`ds_persist`, below
    `stage3_param_persistence_threshold`) is never gathered again from its partitions: copy
    the updated partitions back into its resident full copy."""
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    if not (param.ds_persist and param.ds_status == ZeroParamStatus.AVAILABLE):
        return
    size = param.ds_tensor.ds_numel
    world = dist.get_world_size(group=param.ds_process_group)
    gathered = param.ds_tensor.new_empty(size * world)
    dist.all_gather_into_tensor(gathered, param.ds_tensor, group=param.ds_process_group)
    param.data.copy_(gathered[: param.ds_numel].view(param.ds_shape))


# --- collectives on plain numbers ---------------------------------------------------------------


def collective_device(group: dist.ProcessGroup | None = None) -> torch.device:
    """The device a collective on `group` takes tensors on: this rank's GPU under NCCL (CUDA
    tensors only; init_process_group sets the current device), the CPU under gloo."""
    if "nccl" in str(dist.get_backend(group)):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_numbers(
    values: list[float], op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM, group: Any = None
) -> list[float]:
    """Python numbers (a loss, a token count, a forward count) reduced over the group's ranks,
    as one float64 tensor on the group's device (exact for integers below 2**53)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=collective_device(group))
    dist.all_reduce(tensor, op=op, group=group)
    return tensor.tolist()
