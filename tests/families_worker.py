"""Worker for tests/test_families.py, started by `torchrun --nproc_per_node 2 ... FOLDERS OUT`.

For each family's checkpoint folder: the model is built partitioned (ZeRO-3) and filled from
its safetensors files (lomo.train.distributed.zero3_model), then trained for `STEPS` steps by
LOMO with clipping on global batches of 4 (2 per rank), with the chunked loss. Rank 0 saves
the gathered initial and final weights of every family to OUT.
"""

import json
import sys
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from tiny_models import token_batches

from lomo import LOMO
from lomo.loss import causal_lm_loss
from lomo.sync import ZeRO3Sync
from lomo.train.distributed import init_process_group, zero3_model

STEPS, PER_RANK, LR, CLIP = 3, 2, 0.5, 0.1


def gathered(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        return {n: p.detach().clone() for n, p in model.named_parameters()}


def train(folder: str) -> dict:
    config = {
        "train_micro_batch_size_per_gpu": PER_RANK,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
    }
    model, engine = zero3_model(folder, torch.float32, "eager", config)
    initial = gathered(model)
    opt = LOMO(model, lr=LR, clip_grad_norm=CLIP, sync=ZeRO3Sync(engine))
    rank, world = dist.get_rank(), dist.get_world_size()

    def loss(mine: torch.Tensor) -> torch.Tensor:
        # this rank's share of the global mean loss: the gradients are summed over ranks
        return causal_lm_loss(engine.module, mine, None, mine, chunk_tokens=5) / world

    for tokens in token_batches(STEPS):
        mine = tokens[rank * PER_RANK : (rank + 1) * PER_RANK]
        opt.step(lambda mine=mine: loss(mine))
    return {"initial": initial, "final": gathered(model)}


def main(folders: dict[str, str], out: Path) -> None:
    init_process_group(timeout_s=60)
    torch.set_num_threads(1)
    results = {family: train(folder) for family, folder in folders.items()}
    if dist.get_rank() == 0:
        torch.save(results, out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]), Path(sys.argv[2]))
