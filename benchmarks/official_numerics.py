"""What the paper profile's remaining differences from the official code change, on CPU.

    python benchmarks/official_numerics.py --data-dir ../shared/superglue --out DIR

SmolLM2-135M (a LLaMA architecture with RoPE, like LLaMA-1), zero-shot, the paper profile's
evaluation template, the validation sets of the given tasks. Each comparison counts the
predictions that change and the largest |difference| of a candidate's summed log-likelihood:
- attention: our scorer with sdpa against the same with eager attention (the official code's);
- padding: the official scorer's way (each candidate a whole sequence, left-padded with pad
  id 0, default positions, no cache) against ours (right padding with pad = EOS, a shared
  prompt cache, explicit positions), both eager; and the official way with right padding
  (pad = EOS) against the official way as written, which isolates the padding side and id.
- loss precision: the training loss on the first 4 RTE training examples at fp16 weights,
  cross-entropy on fp16 logits (the official `get_loss`) against on fp32-upcast logits (ours),
  and its gradient with respect to the logits.
Writes official_numerics.json and .md under --out.
"""

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from lomo.io import write_atomic
from lomo.train.evaluate import (
    encode_prompt,
    encode_train_example,
    evaluate,
    with_quirks,
)
from lomo.train.finetune import collate
from lomo.train.models import load_model, load_tokenizer
from tasks.superglue import get_task, get_template, load_split

TEMPLATE = "lomo+pronuon+score-eos"  # the paper profile's


@torch.no_grad()
def official_scores(model, tokenizer, task, examples, template, batch_size, pad_side, pad_id):
    """The official EvalDataCollator + eval_step, on our token ids: every candidate's whole
    sequence (prompt + answer + EOS) padded to the batch's longest, the answer tokens' summed
    log-probabilities."""
    template = get_template(template)
    rows = []  # (prompt ids, answer ids + EOS) per candidate
    sizes = []
    for example in examples:
        _, pairs = encode_prompt(task, example, template, tokenizer, 1024)
        pairs = [with_quirks(pair, template) for pair in pairs]
        rows += [(p, a + [tokenizer.eos_token_id]) for p, a in pairs]
        sizes.append(len(pairs))
    totals = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        width = max(len(p) + len(a) for p, a in batch)
        ids = torch.full((len(batch), width), pad_id)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for i, (p, a) in enumerate(batch):
            n = len(p) + len(a)
            cols = slice(width - n, width) if pad_side == "left" else slice(0, n)
            ids[i, cols] = torch.tensor(p + a)
            mask[i, cols] = 1
            labels[i, cols] = torch.tensor([-100] * len(p) + a)
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        logprobs = -F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], reduction="none")
        totals += logprobs.sum(-1).tolist()
    scores, at = [], 0
    for size in sizes:
        scores.append(totals[at : at + size])
        at += size
    return scores


def compare(a: list[list[float]], b: list[list[float]]) -> dict:
    def pred(s):
        return max(range(len(s)), key=s.__getitem__)

    changed = sum(pred(x) != pred(y) for x, y in zip(a, b, strict=True))
    diff = max(abs(u - v) for x, y in zip(a, b, strict=True) for u, v in zip(x, y, strict=True))
    return {"changed_predictions": changed, "n": len(a), "max_abs_score_diff": diff}


def ours(model, tokenizer, task, examples, batch_size) -> list[list[float]]:
    _, rows = evaluate(model, tokenizer, task, examples, get_template(TEMPLATE), batch_size, "sum")
    return [row["scores"] for row in rows]


def loss_precision(task, data_dir: str, tokenizer, examples: int = 4) -> dict:
    """The loss at fp16 weights: cross-entropy on the fp16 logits (the official `get_loss`)
    against on fp32-upcast logits (ours), and the two gradients with respect to the logits,
    which is where they differ (the model's backward below the logits is the same code; CPU
    fp16 backward through the whole model would take hours)."""
    model = load_model("smollm2-135m", dtype=torch.float16, attn_implementation="eager")
    rows = load_split(task.name, "train", "local", data_dir)[:examples]
    encoded = [encode_train_example(task, ex, get_template(TEMPLATE), tokenizer) for ex in rows]
    batch = collate(encoded, tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    results = {}
    for name, upcast in (("fp32", True), ("fp16", False)):
        leaf = logits[:, :-1].detach().clone().requires_grad_()
        loss = F.cross_entropy((leaf.float() if upcast else leaf).transpose(1, 2), labels)
        loss.backward()
        results[name] = (loss.item(), leaf.grad.float().flatten())
    (loss32, g32), (loss16, g16) = results["fp32"], results["fp16"]
    return {
        "examples": examples,
        "loss_fp32_logits": loss32,
        "loss_fp16_logits": loss16,
        "grad_relative_diff": ((g16 - g32).norm() / g32.norm()).item(),
        "grad_cosine": F.cosine_similarity(g16, g32, dim=0).item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--tasks", nargs="+", default=["rte", "copa"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer("smollm2-135m")
    models = {
        attn: load_model("smollm2-135m", attn_implementation=attn) for attn in ("sdpa", "eager")
    }
    results = {}
    for name in args.tasks:
        task = get_task(name)
        examples = load_split(task.name, "val", "local", args.data_dir)
        ours_sdpa = ours(models["sdpa"], tokenizer, task, examples, args.batch_size)
        ours_eager = ours(models["eager"], tokenizer, task, examples, args.batch_size)
        official = official_scores(
            models["eager"], tokenizer, task, examples, TEMPLATE, args.batch_size, "left", 0
        )
        official_right = official_scores(
            models["eager"],
            tokenizer,
            task,
            examples,
            TEMPLATE,
            args.batch_size,
            "right",
            tokenizer.eos_token_id,
        )
        results[name] = {
            "sdpa_vs_eager (our scorer)": compare(ours_sdpa, ours_eager),
            "official left pad 0 vs ours (eager)": compare(official, ours_eager),
            "official left pad 0 vs right pad EOS": compare(official, official_right),
        }
    results["loss_precision"] = loss_precision(get_task("rte"), args.data_dir, tokenizer)
    lines = [
        "| task | comparison | changed predictions | max abs score diff |",
        "|---|---|---|---|",
    ]
    for name in args.tasks:
        for label, r in results[name].items():
            lines.append(
                f"| {name} | {label} | {r['changed_predictions']} of {r['n']} | "
                f"{r['max_abs_score_diff']:.2e} |"
            )
    p = results["loss_precision"]
    lines.append(
        f"\nLoss, fp16 weights, RTE train[:{p['examples']}]: {p['loss_fp32_logits']:.6f} (fp32 "
        f"logits) vs {p['loss_fp16_logits']:.6f} (fp16 logits); gradient with respect to the "
        f"logits: relative difference "
        f"{p['grad_relative_diff']:.2e}, cosine {p['grad_cosine']:.6f}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / "official_numerics.json", json.dumps(results, indent=1) + "\n")
    write_atomic(args.out / "official_numerics.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
