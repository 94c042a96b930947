"""Validate `lomo plan`: per-rank peaks of LOMO under 2-rank ZeRO-3 on CPU, the paper's Tables
1-2, and DeepSpeed's own ZeRO-3 model-state estimator; writes paper/tables/plan_validation.*.

    python scripts/plan_validation.py            # measures (two torchrun jobs, ~1 min each)

The measurement is a worker (`--worker SPEC`, started by torchrun with 2 ranks, gloo): a
random LLaMA built partitioned under `deepspeed.zero.Init` with config/deepspeed/zero3.json,
LOMO with `ZeRO3Sync` as `lomo finetune --deepspeed` runs it, one warm-up step, then one step
under `MemoryCensus` (live tensor bytes). A rank's peak is the census peak plus the bytes of
its resident partitions (`p.ds_tensor`, alive all along, created before the census).
"""

import argparse
import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
ZERO3 = ROOT / "config" / "deepspeed" / "zero3.json"


def worker(spec: dict) -> None:
    import deepspeed
    import torch.distributed as dist
    from transformers import LlamaConfig, LlamaForCausalLM

    from lomo import LOMO
    from lomo.census import MemoryCensus, ProcessPeak, proc_status_bytes
    from lomo.distributed import ZeRO3Sync, init_process_group
    from lomo.finetune import deepspeed_config

    device = init_process_group()
    world, rank = dist.get_world_size(), dist.get_rank()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[spec["dtype"]]
    config = LlamaConfig(
        vocab_size=spec["vocab"],
        hidden_size=spec["hidden"],
        intermediate_size=spec["intermediate"],
        num_hidden_layers=spec["layers"],
        num_attention_heads=spec["heads"],
        num_key_value_heads=spec["heads"],
        tie_word_embeddings=False,
        attn_implementation=spec["attn"],
    )
    ds_config = deepspeed_config(str(ZERO3), spec["batch"] * world, world)
    baseline = proc_status_bytes("VmRSS")
    torch.manual_seed(0)
    with deepspeed.zero.Init(config_dict_or_path=ds_config, dtype=dtype):
        model = LlamaForCausalLM(config)
    engine, *_ = deepspeed.initialize(model=model, config=ds_config)
    model.config.use_cache = False
    if spec["ac"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    census = MemoryCensus(model)  # before the optimizer: its gradient hooks run first
    opt = LOMO(model, lr=1e-3, clip_grad_norm=spec["clip"], sync=ZeRO3Sync(engine))
    generator = torch.Generator().manual_seed(rank)
    tokens = torch.randint(0, spec["vocab"], (spec["batch"], spec["seq"]), generator=generator)
    tokens = tokens.to(device)

    def loss() -> torch.Tensor:
        return engine.module(input_ids=tokens, labels=tokens).loss

    opt.step(loss)  # warm-up: DeepSpeed traces the module order in its first step
    resident = sum(p.ds_tensor.numel() * p.ds_tensor.element_size() for p in model.parameters())
    with ProcessPeak(device, baseline) as process, census:
        opt.step(loss)
    result = {
        "rank": rank,
        "resident_partition_bytes": resident,
        "census_peak": census.peak,
        "at_peak": census.at_peak,
        "category_peak": census.category_peak,
        "peak": resident + census.peak,
        "process_peak": process.peak,
    }
    results = [None] * world
    dist.all_gather_object(results, result)
    if rank == 0:
        print(json.dumps(results))
    dist.destroy_process_group()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(json.loads(sys.argv[2]))
