"""Worker for tests/test_distributed.py, started by `torchrun --nproc_per_node 2 ... OUT`.

Trains tiny LLaMA copies for 3 steps on global batches of 4 (2 per rank) with LOMO and
AdaLomo, clipping on and off, under DeepSpeed ZeRO-3 and under plain data parallelism.
Rank 0 saves to OUT the gathered initial and final weights of every run and each rank's
partition sizes. (Under `deepspeed.zero.Init` the model skips transformers' own weight init,
so the single-process reference starts from the gathered initial weights.)
"""

import sys
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from tiny_models import lm_loss, tiny_llama, token_batches

from lomo import LOMO, AdaLomo
from lomo.sync import ReplicatedSync, ZeRO3Sync
from lomo.train.distributed import broadcast_parameters, init_process_group

STEPS, PER_RANK = 3, 2
# (optimizer, clip_grad_norm, lr) for every run; the same list drives the single-process side.
RUNS = [
    ("lomo", None, 0.5),
    ("lomo", 0.5, 0.5),
    ("adalomo", None, 0.05),
    ("adalomo", 0.5, 0.05),
]
# 0: every parameter partitioned; 100: the norm weights (32 values) stay gathered (ds_persist).
PERSISTENCE = (0, 100)


def make_optimizer(name: str, model, clip: float | None, lr: float, sync=None):
    cls = LOMO if name == "lomo" else AdaLomo
    return cls(model, lr=lr, clip_grad_norm=clip, sync=sync)


def local_batches() -> list[torch.Tensor]:
    """This rank's rows of each global batch of 4 (equal lengths, so the per-rank mean
    losses over the number of ranks sum to the global mean loss: `local_loss`)."""
    rank = dist.get_rank()
    return [b[rank * PER_RANK : (rank + 1) * PER_RANK] for b in token_batches(STEPS)]


def local_loss(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """This rank's share of the global mean loss: the syncs sum gradients over ranks."""
    return lm_loss(model, tokens) / dist.get_world_size()


def gathered(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        return {n: p.detach().clone() for n, p in model.named_parameters()}


def zero3_run(name: str, clip: float | None, lr: float, persistence: int) -> dict:
    config = {
        "train_micro_batch_size_per_gpu": PER_RANK,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": persistence},
    }
    with deepspeed.zero.Init(config_dict_or_path=config):
        model = tiny_llama()
    engine, *_ = deepspeed.initialize(model=model, config=config)
    initial = gathered(model)
    opt = make_optimizer(name, model, clip, lr, sync=ZeRO3Sync(engine))
    norms = []
    for tokens in local_batches():
        opt.step(lambda tokens=tokens: local_loss(engine.module, tokens))
        norms.append(opt.last_grad_norm.item() if clip else None)
    partitions = {
        n: (p.ds_tensor.numel(), p.ds_numel, p.data.numel(), bool(p.ds_persist))
        for n, p in model.named_parameters()
    }
    partitions_by_rank = [None] * dist.get_world_size()
    dist.all_gather_object(partitions_by_rank, partitions)
    return {
        "initial": initial,
        "final": gathered(model),
        "partitions": partitions_by_rank,
        "grad_norms": norms,
    }


def replicated_run(name: str, clip: float | None, lr: float) -> dict:
    model = tiny_llama(seed=dist.get_rank())  # different on purpose: broadcast must fix it
    broadcast_parameters(model)
    opt = make_optimizer(name, model, clip, lr, sync=ReplicatedSync())
    for tokens in local_batches():
        opt.step(lambda tokens=tokens: local_loss(model, tokens))
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def main(out: Path) -> None:
    init_process_group(timeout_s=60)
    torch.set_num_threads(1)
    results: dict = {"zero3": {}, "replicated": {}}
    for persistence in PERSISTENCE:
        for run in RUNS:
            results["zero3"][(*run, persistence)] = zero3_run(*run, persistence)
    for run in RUNS:
        results["replicated"][run] = replicated_run(*run)
    if dist.get_rank() == 0:
        torch.save(results, out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
