"""Tokenisation of SuperGLUE examples and log-likelihood evaluation of their candidate answers.

Each example renders to a prompt and one candidate per option. Training sequences are
prompt + gold answer + EOS with the prompt masked (-100). Evaluation scores every candidate by
the log-likelihood of its tokens after the prompt (summed, or averaged per token as in MeZO)
and predicts the best one. Prompts too long for `max_length` lose the end of the task's context
field (passage / premise / ...), never the question or the answers.
"""

import argparse
import json
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lomo.models import load_model, load_tokenizer
from tasks.superglue import PROTOCOLS, TASKS, Prompt, Task, Template, get_task, get_template
from tasks.superglue.data import to_jsonl, write_atomic
from tasks.superglue.protocols import prepare

IGNORE_INDEX = -100
REDUCTIONS = ("sum", "mean")
Pair = tuple[list[int], list[int]]  # (prompt token ids, answer token ids)


def encode_pair(tokenizer: PreTrainedTokenizerBase, prompt: str, answer: str) -> Pair:
    """Token ids of the prompt and of the answer that follows it.

    As in lm-evaluation-harness, trailing spaces of the prompt move to the answer ("Answer: " +
    "Yes" -> "Answer:" + " Yes") so BPE tokenizers see the usual " Yes" token, and the answer
    ids are the tail of the jointly encoded text (SentencePiece adds no stray prefix).
    """
    n_spaces = len(prompt) - len(prompt.rstrip(" "))
    if n_spaces:
        prompt, answer = prompt[:-n_spaces], prompt[-n_spaces:] + answer
    prompt_ids = tokenizer(prompt).input_ids
    whole = tokenizer(prompt + answer).input_ids
    if whole[: len(prompt_ids)] != prompt_ids:  # a token spans the boundary: encode apart
        return prompt_ids, tokenizer(answer, add_special_tokens=False).input_ids
    return prompt_ids, whole[len(prompt_ids) :]


def encode_prompt(
    task: Task,
    example: dict,
    template: Template,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
) -> tuple[Prompt, list[Pair]]:
    """Render and encode all candidates so that the longest one plus EOS fits `max_length`,
    cutting tokens from the end of the task's context field when needed."""
    prompt = task.render(example, template)
    pairs = [encode_pair(tokenizer, prompt.text, c) for c in prompt.candidates]
    excess = max(len(p) + len(a) for p, a in pairs) + 1 - max_length
    if excess <= 0:
        return prompt, pairs
    field = task.context_field
    if field is None:
        raise ValueError(
            f"{task.name} example {example['idx']}: prompt is {excess} tokens over max_length "
            f"{max_length} and the task has no context field to cut"
        )
    context_ids = tokenizer(example[field], add_special_tokens=False).input_ids
    keep = len(context_ids) - excess
    while keep > 0:
        shorter = {**example, field: tokenizer.decode(context_ids[:keep])}
        prompt = task.render(shorter, template)
        pairs = [encode_pair(tokenizer, prompt.text, c) for c in prompt.candidates]
        excess = max(len(p) + len(a) for p, a in pairs) + 1 - max_length
        if excess <= 0:
            return prompt, pairs
        keep -= excess
    raise ValueError(
        f"{task.name} example {example['idx']}: does not fit max_length {max_length} even "
        f"with the whole {field} removed"
    )


def with_quirks(pair: Pair, template: Template) -> Pair:
    # The official code masks len(prompt) - 1 tokens, so the last prompt token is scored too.
    prompt_ids, answer_ids = pair
    if "last-prompt-token" in template.quirks:
        return prompt_ids[:-1], prompt_ids[-1:] + answer_ids
    return pair


def encode_train_example(
    task: Task,
    example: dict,
    template: Template,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int = 1024,
) -> dict[str, list[int]]:
    """input_ids = prompt + gold answer + EOS; labels = the same with the prompt set to -100."""
    prompt, pairs = encode_prompt(task, example, template, tokenizer, max_length)
    prompt_ids, answer_ids = with_quirks(pairs[prompt.gold], template)
    answer_ids = answer_ids + [tokenizer.eos_token_id]
    return {
        "input_ids": prompt_ids + answer_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + answer_ids,
    }


@torch.no_grad()
def score_pairs(
    model: PreTrainedModel,
    pairs: list[Pair],
    batch_size: int,
    pad_token_id: int,
    progress: bool = False,
) -> list[tuple[float, int]]:
    """(summed log-probability of the answer tokens given the prompt, number of answer tokens)
    for each pair, in batches right-padded to their longest sequence."""
    if any(not p or not a for p, a in pairs):
        raise ValueError("every pair needs at least one prompt token and one answer token")
    # Longest first: batches of similar length waste little on padding.
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    results: list[tuple[float, int]] = [(0.0, 0)] * len(pairs)
    device = next(model.parameters()).device
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc="scoring", unit="batch", disable=not progress):
        batch = order[start : start + batch_size]
        sequences = [pairs[i][0] + pairs[i][1] for i in batch]
        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, sequence in enumerate(sequences):
            input_ids[row, : len(sequence)] = torch.tensor(sequence)
            attention_mask[row, : len(sequence)] = 1
        logits = model(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)
        ).logits
        for row, i in enumerate(batch):
            prompt_ids, answer_ids = pairs[i]
            # Logits at position t predict token t + 1.
            first = len(prompt_ids) - 1
            logprobs = torch.log_softmax(logits[row, first : first + len(answer_ids)].float(), -1)
            targets = torch.tensor(answer_ids, device=logprobs.device)
            total = logprobs.gather(-1, targets[:, None]).sum().item()
            results[i] = (total, len(answer_ids))
    return results


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    examples: list[dict],
    template: Template,
    batch_size: int = 8,
    reduction: str = "sum",
    max_length: int = 1024,
    progress: bool = False,
) -> tuple[dict[str, float], list[dict]]:
    """Predict each example's best-scoring candidate; return task metrics and per-example rows
    (idx, gold, pred, one score and token count per candidate)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}: expected one of {REDUCTIONS}")
    prompts, pairs, owner = [], [], []
    for i, example in enumerate(examples):
        prompt, example_pairs = encode_prompt(task, example, template, tokenizer, max_length)
        prompts.append(prompt)
        for prompt_ids, answer_ids in (with_quirks(p, template) for p in example_pairs):
            if "score-eos" in template.quirks:
                answer_ids = answer_ids + [tokenizer.eos_token_id]
            pairs.append((prompt_ids, answer_ids))
            owner.append(i)
    was_training = model.training
    model.eval()
    try:
        scored = score_pairs(model, pairs, batch_size, tokenizer.pad_token_id, progress)
    finally:
        model.train(was_training)

    scores: list[list[float]] = [[] for _ in examples]
    lengths: list[list[int]] = [[] for _ in examples]
    for i, (total, n_tokens) in zip(owner, scored, strict=True):
        scores[i].append(total / n_tokens if reduction == "mean" else total)
        lengths[i].append(n_tokens)
    preds = [max(range(len(s)), key=s.__getitem__) for s in scores]  # first best on ties
    rows = [
        {"idx": ex["idx"], "gold": p.gold, "pred": pred, "scores": s, "n_tokens": n}
        for ex, p, pred, s, n in zip(examples, prompts, preds, scores, lengths, strict=True)
    ]
    return task.metrics(examples, preds), rows


# --- command line ----------------------------------------------------------------------------

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="zero-shot / checkpoint evaluation on a SuperGLUE task"
    )
    parser.add_argument("--model", required=True, help="smollm2-135m, tiny-llama, folder, hub id")
    parser.add_argument("--task", required=True, help=f"one of {', '.join(TASKS)}")
    parser.add_argument("--source", choices=("local", "hub"), default="local")
    parser.add_argument("--data-dir", help="SuperGLUE folder (official layout) for --source local")
    parser.add_argument("--split", choices=("train", "val"), default="val")
    parser.add_argument(
        "--protocol", choices=PROTOCOLS, help="evaluate on this protocol's eval examples instead"
    )
    parser.add_argument("--template", default="lomo", help="lomo, mezo, lm-eval; lomo+QUIRK...")
    parser.add_argument("--reduction", choices=REDUCTIONS, default="sum")
    parser.add_argument("--limit", type=int, help="only the first N examples")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--out", required=True, type=Path, help="results JSON (+ .jsonl rows)")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> None:
    # Everything that can fail on bad input runs before the (slow) model load.
    if args.out.suffix != ".json":
        raise SystemExit(f"--out must name a .json file, got {args.out}")
    task = get_task(args.task)
    template = get_template(args.template)
    if args.protocol:
        examples = prepare(task.name, args.protocol, args.source, args.data_dir).eval
    else:
        examples = task.load(args.split, args.source, args.data_dir)
    if args.limit is not None:
        if args.limit < 1:
            raise SystemExit(f"--limit must be at least 1, got {args.limit}")
        examples = examples[: args.limit]

    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model, dtype=DTYPES[args.dtype])
    metrics, rows = evaluate(
        model,
        tokenizer,
        task,
        examples,
        template,
        args.batch_size,
        args.reduction,
        args.max_length,
        progress=True,
    )
    predictions = args.out.with_suffix(".jsonl")
    summary = {
        "model": args.model,
        "task": task.name,
        "template": template.id,
        "source": args.source,
        "split": f"{args.protocol}:eval" if args.protocol else args.split,
        "n": len(examples),
        "reduction": args.reduction,
        "max_length": args.max_length,
        "dtype": args.dtype,
        "metrics": metrics,
        "predictions": predictions.name,
    }
    write_atomic(predictions, to_jsonl(rows))
    write_atomic(args.out, json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary["metrics"]), f"n={len(examples)} -> {args.out}")
