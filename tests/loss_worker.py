"""Worker for tests/test_loss.py, started by `torchrun --nproc_per_node 2 ... OUT`.

Under DeepSpeed ZeRO-3 (the LM head and embedding partitioned over the two ranks), each rank
computes the chunked loss on its own rows and runs backward once; a post-accumulate-grad hook
on every parameter records the gradient it sees (as LOMO's hook would) and how often it fires.
The ranks hold different numbers of label tokens, so they need different chunk counts.
Rank 0 saves, per tie setting, each rank's loss, gradients, hook calls and the gathered
initial weights.
"""

import math
import sys
from pathlib import Path

import torch
from tiny_models import token_batches

from lomo.loss import IGNORE_INDEX

CHUNK_TOKENS = 4
PROMPT = (2, 7)  # ignored label positions per rank: 2 x 10 vs 2 x 5 label tokens


def rank_batch(rank: int) -> dict[str, torch.Tensor]:
    (tokens,) = token_batches(1)
    input_ids = tokens[2 * rank : 2 * rank + 2]
    labels = input_ids.clone()
    labels[:, : PROMPT[rank]] = IGNORE_INDEX
    return dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), labels=labels)


def zero3_run(tie: bool) -> dict:
    import deepspeed
    import torch.distributed as dist
    from tiny_models import tiny_llama

    from lomo.loss import causal_lm_loss

    config = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
    }
    with deepspeed.zero.Init(config_dict_or_path=config):
        model = tiny_llama(tie=tie)
    engine, *_ = deepspeed.initialize(model=model, config=config)
    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads, calls = {}, {}

    def record(name: str):
        def hook(param: torch.Tensor) -> None:
            grads[name] = param.grad.detach().clone()
            calls[name] = calls.get(name, 0) + 1
            param.grad = None  # as LOMO: the gradient is consumed in the hook

        return hook

    for name, param in model.named_parameters():
        param.register_post_accumulate_grad_hook(record(name))
    batch = rank_batch(dist.get_rank())
    loss = causal_lm_loss(engine.module, **batch, chunk_tokens=CHUNK_TOKENS)
    loss.backward()
    engine.optimizer.release_backward_leftovers()
    label_tokens = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    return {
        "initial": initial,
        "loss": loss.detach(),
        "grads": grads,
        "hook_calls": calls,
        "own_chunks": math.ceil(label_tokens / CHUNK_TOKENS),
    }


def main(out: Path) -> None:
    import torch.distributed as dist

    from lomo.train.distributed import init_process_group

    init_process_group(timeout_s=60)
    torch.set_num_threads(1)
    results = {tie: [None] * dist.get_world_size() for tie in (False, True)}
    for tie in (False, True):
        dist.all_gather_object(results[tie], zero3_run(tie))
    if dist.get_rank() == 0:
        torch.save(results, out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
