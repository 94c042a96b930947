"""Processes for data-parallel and ZeRO-3 runs: joining the job, collectives on plain
numbers, a ZeRO-3 model built from a checkpoint, and evaluation sharded over ranks. What a
gradient hook does under each strategy is `lomo.sync`."""

import datetime
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lomo.sync import ZeRO3Sync, all_reduce_numbers
from lomo.train.models import TINY_LLAMA, load_model, resolve, supported_attention


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


class DistributedSetupError(ConnectionError):
    """This process could not join the others (the launcher's variables, the network)."""


def launched_distributed() -> bool:
    """True under torchrun / the deepspeed launcher / srun with WORLD_SIZE set."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_process_group(timeout_s: float = 1800.0) -> torch.device:
    """Join the job started by torchrun (or the deepspeed launcher, or SLURM with the torchrun
    variables set); returns this rank's device.

    NCCL on GPUs, gloo on CPU. `timeout_s` bounds every collective, so a rank that dies
    without the launcher noticing (another node) fails the job instead of hanging it. 30
    minutes, not 10: the barrier after a checkpoint waits for the slowest rank's write, and
    65B's 130 GB to a shared filesystem at 250 MB/s takes about 9 minutes."""
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
    if "RANK" not in os.environ:  # not launched by torchrun: a group of this one process
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            port = free.getsockname()[1]
        os.environ.update(
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1"
        )
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE") if v not in os.environ]
    if missing and not dist.is_initialized():
        raise DistributedSetupError(
            f"RANK is set but {', '.join(missing)} not: start the processes with torchrun "
            "(or set every torch.distributed environment variable)"
        )
    if not dist.is_initialized():
        try:
            deepspeed.init_distributed(
                dist_backend=backend, timeout=datetime.timedelta(seconds=timeout_s)
            )
        except (RuntimeError, ValueError) as error:  # torch's DistNetworkError, env:// checks
            where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
            raise DistributedSetupError(
                f"rank {os.environ.get('RANK')} of {os.environ.get('WORLD_SIZE')} could not join "
                f"the process group at {where} ({error}): start every rank with the same "
                "launcher command (torchrun --nproc_per_node N ...) and a free MASTER_PORT"
            ) from error
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
    return all_reduce_numbers([value])[0]


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
        attn_implementation = supported_attention(config, attn_implementation)
        # DeepSpeed 0.19.8's zero.Init ignores `dtype` where the accelerator lacks fp16 (on CPU
        # every partition would be bf16) but honours the config's precision flags: state it there.
        init_config = {
            **ds_config,
            "fp16": {"enabled": dtype == torch.float16},
            "bf16": {"enabled": dtype == torch.bfloat16},
        }
        # No random init: it would run on empty partitions, and the checkpoint overwrites it.
        with no_init_weights(), deepspeed.zero.Init(config_dict_or_path=init_config):
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
        (most,) = all_reduce_numbers([calls[0]], op=dist.ReduceOp.MAX)
        device = next(model.parameters()).device
        with torch.no_grad():
            for _ in range(int(most) - calls[0]):
                model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=device))
    by_rank: list[list[dict]] = [[] for _ in range(ranks)]
    dist.all_gather_object(by_rank, rows)
    ordered = [by_rank[i % ranks][i // ranks] for i in range(len(examples))]
    return metrics(examples, [row["pred"] for row in ordered]), ordered
