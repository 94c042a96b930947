"""Data parallelism for LOMO and AdaLomo: what a gradient hook does with this rank's gradient.

`FusedOptimizer` calls one of these strategies from each parameter's gradient hook, with
constant work per parameter (no scan over the model, unlike the official code):

- `GradSync`: one process; nothing to communicate.
- `ReplicatedSync`: plain data parallelism. Every rank holds the whole model; one all-reduce
  averages the gradient and every rank applies the same update.
- `ZeRO3Sync`: DeepSpeed ZeRO-3. Every rank holds a 1/world flat partition of each parameter
  (`p.ds_tensor`), gathered by DeepSpeed only around the modules that use it. A reduce-scatter
  leaves each rank the average of its own slice (half the traffic of an all-reduce); AdaLomo,
  whose factored second moment needs row and column means of the whole gradient, asks for the
  full average (all-reduce) instead. Each rank then updates only its partition, in fp32.

Global statistics (the gradient norm, AdaLomo's parameter RMS) are sums of squares over each
rank's slice, summed over ranks with one scalar all-reduce, so every element counts once.
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
  parameter is still gathered), so the hook can average it and update `p.ds_tensor`, which is
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

import datetime
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn


class GradSync:
    """One process: the gradient is already the global one, and this process owns it all."""

    fresh_forward_per_pass = False  # True where a graph cannot be backpropagated twice

    def average(self, param: Tensor, grad: Tensor, full: bool) -> tuple[Tensor, Tensor | None]:
        """Average `grad` over ranks: (the part of the average that this rank updates, the
        whole average if `full` else None)."""
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
    """Plain data parallelism: full model on every rank, gradients averaged by all-reduce.

    Every rank ends a step with the same weights, as long as they started with the same ones
    (`broadcast_parameters`)."""

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        self.group = group

    def average(self, param: Tensor, grad: Tensor, full: bool) -> tuple[Tensor, Tensor | None]:
        dist.all_reduce(grad, op=dist.ReduceOp.AVG, group=self.group)
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

    def average(self, param: Tensor, grad: Tensor, full: bool) -> tuple[Tensor, Tensor | None]:
        start, end = self._range(param)
        if full:
            dist.all_reduce(grad, op=dist.ReduceOp.AVG, group=param.ds_process_group)
            return grad.reshape(-1)[start:end], grad
        size = param.ds_tensor.ds_numel
        world = dist.get_world_size(group=param.ds_process_group)
        flat = grad.reshape(-1)
        if flat.numel() < size * world:  # ZeRO-3 pads the last partition
            flat = torch.nn.functional.pad(flat, (0, size * world - flat.numel()))
        part = grad.new_empty(size)
        dist.reduce_scatter_tensor(part, flat, op=dist.ReduceOp.AVG, group=param.ds_process_group)
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


# --- process setup ---------------------------------------------------------------------------


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def launched_distributed() -> bool:
    """True under torchrun / the deepspeed launcher / srun with WORLD_SIZE set."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_process_group(timeout_s: float = 600.0) -> torch.device:
    """Join the job started by torchrun (or the deepspeed launcher, or SLURM with the torchrun
    variables set); returns this rank's device.

    NCCL on GPUs, gloo on CPU. `timeout_s` bounds every collective, so a rank that dies
    without the launcher noticing (another node) fails the job instead of hanging it."""
    import deepspeed

    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
        # DeepSpeed's CPU accelerator JIT-compiles a shared-memory all-reduce kernel (minutes)
        # that only its inference engine uses; ZeRO-3 and our hooks use torch.distributed.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if not dist.is_initialized():
        deepspeed.init_distributed(
            dist_backend=backend, timeout=datetime.timedelta(seconds=timeout_s)
        )
    return device


def broadcast_parameters(model: nn.Module) -> None:
    """Plain data parallelism: start every rank from rank 0's weights and buffers."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(tensor.data, src=0)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_sum(value: float) -> float:
    """The sum over ranks of a Python number (a token count, a loss)."""
    if not dist.is_initialized():
        return value
    tensor = torch.tensor(float(value), dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.item()


# --- ZeRO-3 models -----------------------------------------------------------------------------


def zero3_model(
    name_or_path: str, dtype: torch.dtype, attn_implementation: str, ds_config: dict
) -> tuple[nn.Module, Any]:
    """(model, engine) with every parameter partitioned over the ranks from the start.

    A checkpoint folder is read one parameter at a time from its memory-mapped safetensors
    files, each rank copying only its own slice, so no process ever holds the whole model
    (transformers' own ZeRO-3 loading merges the checkpoint on rank 0). `tiny-llama` (tests)
    is built whole and partitioned by `deepspeed.initialize`."""
    import deepspeed
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    from lomo.models import TINY_LLAMA, load_model, resolve

    if name_or_path == TINY_LLAMA:
        model = load_model(name_or_path, dtype, attn_implementation)
    else:
        folder = Path(resolve(name_or_path))
        if not folder.is_dir():  # a hub id: rank 0 downloads, the others read its cache
            from huggingface_hub import snapshot_download

            if rank() != 0:
                barrier()
            patterns = ["*.json", "*.safetensors", "*.model"]
            folder = Path(
                snapshot_download(
                    str(folder), allow_patterns=patterns, local_files_only=rank() != 0
                )
            )
            if rank() == 0:
                barrier()
        config = AutoConfig.from_pretrained(folder)
        # No random init: it would run on empty partitions, and the checkpoint overwrites it.
        with no_init_weights(), deepspeed.zero.Init(config_dict_or_path=ds_config, dtype=dtype):
            model = AutoModelForCausalLM.from_config(
                config, dtype=dtype, attn_implementation=attn_implementation
            )
        model.tie_weights()  # not done under zero.Init; a tied weight is then one parameter
        load_partitions(model, folder)
    engine, *_ = deepspeed.initialize(model=model, config=ds_config)
    return model, engine


def load_partitions(model: nn.Module, folder: Path) -> None:
    """Fill each rank's partitions from a safetensors checkpoint, one parameter at a time."""
    from safetensors import safe_open

    location = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, framework="pt") as f:
            location.update(dict.fromkeys(f.keys(), path))
    for name, param in model.named_parameters():  # a tied weight comes once, by its first name
        if name not in location:
            raise KeyError(f"{name} is not in the safetensors files of {folder}")
        with safe_open(location[name], framework="pt") as f:
            full = f.get_tensor(name)
        start, end = ZeRO3Sync._range(param)
        param.ds_tensor[: end - start].copy_(full.reshape(-1)[start:end])


def gather_state_dict(model: nn.Module) -> dict[str, Tensor] | None:
    """The full weights on rank 0's CPU (None elsewhere), gathered one parameter at a time."""
    import deepspeed

    state = {}
    for name, param in model.named_parameters():
        with deepspeed.zero.GatheredParameters([param]):
            if rank() == 0:
                state[name] = param.detach().cpu().clone()
    return state if rank() == 0 else None


# --- sharded evaluation ------------------------------------------------------------------------


def evaluate_sharded(
    model: nn.Module,
    examples: list[dict],
    evaluate_shard: Callable[[list[dict]], list[dict]],
    metrics: Callable[[list[dict], list[int]], dict[str, float]],
    zero3: bool,
) -> tuple[dict[str, float], list[dict]]:
    """Rank r scores examples r, r + world, ...; the rows are gathered back into the original
    order and the metrics computed on all of them, on every rank.

    Under ZeRO-3 every forward gathers the weights collectively, so a rank that ran fewer
    forwards (fewer or shorter candidate lists) runs dummy ones until all ranks are even."""
    ranks, me = world_size(), rank()
    calls = [0]
    counter = model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        mine = examples[me::ranks]
        rows = evaluate_shard(mine) if mine else []
    finally:
        counter.remove()
    if zero3:
        most = torch.tensor(calls[0])
        dist.all_reduce(most, op=dist.ReduceOp.MAX)
        device = next(model.parameters()).device
        with torch.no_grad():
            for _ in range(int(most) - calls[0]):
                model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=device))
    by_rank: list[list[dict]] = [[] for _ in range(ranks)]
    dist.all_gather_object(by_rank, rows)
    ordered = [by_rank[i % ranks][i // ranks] for i in range(len(examples))]
    return metrics(examples, [row["pred"] for row in ordered]), ordered
