"""Worker for tests/test_distributed.py, started by `torchrun --nproc_per_node 2 ... OUT`.

One global batch of four one-value tokens through an fp16 `Linear(1, 1)` of weight 1, split
unevenly over the two ranks (`TOKENS`). Each rank weights its mean loss by
`Runtime.loss_weights`. Under the loss scale 2**16 the one-process fp16 gradient,
2**16 * (1 + 1 + 1 + 0.5) / 4 = 57344, is finite; rank 0's part is 49152, and twice that (a
rank's loss weighted by `world` times its share, the gradients then averaged) is inf.
Rank 0 saves to OUT, per rank, the outcome of one LOMO step (overflow, grad norm, new weight)
and the gradient summed over ranks by `Runtime.sum_gradients` (the torch optimizers' path).
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from lomo import LOMO
from lomo.loss_scaler import DynamicLossScaler
from lomo.sync import ReplicatedSync
from lomo.train.runtime import Runtime

TOKENS = ([1.0, 1.0, 1.0], [0.5])  # rank r's inputs
SCALE = DynamicLossScaler.init_scale  # 2**16, LOMO's first fp16 loss scale
LR = 2.0**-4


def fp16_layer() -> nn.Linear:
    layer = nn.Linear(1, 1, bias=False, dtype=torch.float16)
    nn.init.ones_(layer.weight)
    return layer


def mean_loss(layer: nn.Linear, inputs: list[float]) -> torch.Tensor:
    """The mean output in fp32, as the fine-tuning loss: fp16 starts at the layer's output."""
    x = torch.tensor(inputs, dtype=torch.float16).unsqueeze(1)
    return layer(x).float().mean()


def main(out: Path) -> None:
    runtime = Runtime.start(None)
    mine = TOKENS[runtime.rank]
    (weight,) = runtime.loss_weights([len(mine)])

    layer = fp16_layer()
    opt = LOMO(layer, lr=LR, sync=ReplicatedSync())
    opt.step(lambda: mean_loss(layer, mine) * weight)
    result = {
        "overflow": opt.overflow,
        "grad_norm": opt.last_grad_norm.item(),
        "weight": layer.weight.item(),
    }

    layer = fp16_layer()
    (mean_loss(layer, mine) * weight * SCALE).backward()
    runtime.sum_gradients([layer.weight])
    result["summed_gradient"] = layer.weight.grad.item()

    results = [None] * runtime.world
    dist.all_gather_object(results, result)
    if runtime.main:
        out.write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
