"""Worker for tests/test_distributed.py, started by `torchrun --nproc_per_node 2 ... OUT`.

Evaluates the first MultiRC validation examples with tiny-llama partitioned by DeepSpeed
ZeRO-3 over the ranks, as `lomo finetune` does (`Runtime.evaluate`), under the official and
lm-eval templates. Each rank's share has prompts that repeat or share their paragraph, so the
scorer's distinct-prompt and shared-prefix paths run under ZeRO-3. Rank 0 writes the rows.
"""

import json
import sys
from pathlib import Path

import torch
from paths import DATA_DIR

from lomo.train.evaluate import evaluate
from lomo.train.models import load_tokenizer
from lomo.train.runtime import Runtime
from tasks.superglue import get_task, get_template, load_split

TEMPLATES, N_EXAMPLES = ("lomo", "lm-eval"), 16


def main(out: Path) -> None:
    zero3 = Path(__file__).parents[1] / "config" / "deepspeed" / "zero3.json"
    runtime = Runtime.start(str(zero3))
    model = runtime.load_model("tiny-llama", torch.float32, "sdpa", global_batch=2)
    tokenizer, task = load_tokenizer("tiny-llama"), get_task("multirc")
    examples = load_split(task.name, "val", "local", DATA_DIR)[:N_EXAMPLES]
    rows = {}
    for name in TEMPLATES:
        template = get_template(name)

        def score(shard: list[dict], template=template) -> list[dict]:
            return evaluate(model, tokenizer, task, shard, template, batch_size=4)[1]

        rows[name] = runtime.evaluate(model, examples, score, task.metrics)[1]
    if runtime.main:
        out.write_text(json.dumps(rows))
    runtime.barrier()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
