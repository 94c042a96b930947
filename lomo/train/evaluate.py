"""Tokenisation of SuperGLUE examples and log-likelihood evaluation of their candidate answers.

Each example renders to a prompt and one candidate per option. Training sequences are
prompt + gold answer + EOS with the prompt masked (-100). Evaluation scores every candidate by
the log-likelihood of its tokens after the prompt (summed, or averaged per token as in MeZO)
and predicts the best one. Prompts too long for `max_length` lose the end of the task's context
field (passage / premise / ...), never the question or the answers.
"""

import argparse
import json
import math
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from lomo import argtypes
from lomo.io import write_atomic
from lomo.train.models import DTYPES, load_model, load_tokenizer
from tasks.superglue import (
    PROTOCOLS,
    TASKS,
    Prompt,
    Task,
    Template,
    get_task,
    get_template,
    load_split,
)
from tasks.superglue.data import to_jsonl
from tasks.superglue.protocols import prepare

IGNORE_INDEX = -100
REDUCTIONS = ("sum", "mean")
# Prompts of a batch that share at least this many leading tokens (MultiRC's and BoolQ's
# passage, a few-shot preamble) run the shared part once; below it a second forward costs more
# than it saves.
SHARED_PREFIX_MIN = 32
Pair = tuple[list[int], list[int]]  # (prompt token ids, answer token ids)
Group = tuple[list[int], list[list[int]]]  # (prompt token ids, answer token ids per candidate)


def encode_pair(
    tokenizer: PreTrainedTokenizerBase, prompt: str, answer: str, template: Template | None = None
) -> Pair:
    """Token ids of the prompt and of the answer that follows it.

    As in lm-evaluation-harness, trailing spaces of the prompt move to the answer ("Answer: " +
    "Yes" -> "Answer:" + " Yes") so BPE tokenizers see the usual " Yes" token, and the answer
    ids are the tail of the jointly encoded text (SentencePiece adds no stray prefix); where a
    token spans the boundary the answer is encoded apart. The `lm-eval` template follows
    lm-evaluation-harness's `_encode_pair` (lm_eval/api/model.py) to the token: all trailing
    whitespace moves (ReCoRD's prompt ends in a newline) and the answer is always the tail.
    """
    lm_eval = template is not None and template.name == "lm-eval"
    context = prompt.rstrip() if lm_eval else prompt.rstrip(" ")
    prompt, answer = context, prompt[len(context) :] + answer
    prompt_ids = tokenizer(prompt).input_ids
    whole = tokenizer(prompt + answer).input_ids
    if not lm_eval and whole[: len(prompt_ids)] != prompt_ids:  # a token spans the boundary
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
    pairs = [encode_pair(tokenizer, prompt.text, c, template) for c in prompt.candidates]
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
        pairs = [encode_pair(tokenizer, prompt.text, c, template) for c in prompt.candidates]
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


def prompt_order(prompts: list[list[int]]) -> list[int]:
    """The order prompts are scored in: longest first (little padding), except that prompts
    beginning with the same `SHARED_PREFIX_MIN` tokens stay together (a family, placed by its
    longest prompt), so a batch of them can run their common prefix once."""
    families: dict[tuple[int, ...], list[int]] = {}
    for i, prompt in enumerate(prompts):
        families.setdefault(tuple(prompt[:SHARED_PREFIX_MIN]), []).append(i)
    order = []
    for family in sorted(families.values(), key=lambda f: -max(len(prompts[i]) for i in f)):
        order += sorted(family, key=lambda i: -len(prompts[i]))
    return order


def shared_prefix_length(prompts: list[list[int]]) -> int:
    """How many leading tokens the prompts share, if at least `SHARED_PREFIX_MIN`, else 0;
    never all of a prompt (its last token's logits score the first answer token)."""
    shared = min(len(prompt) for prompt in prompts) - 1
    for prompt in prompts[1:]:
        shared = next((k for k in range(shared) if prompt[k] != prompts[0][k]), shared)
    return shared if shared >= SHARED_PREFIX_MIN else 0


def score_candidates(
    model: PreTrainedModel,
    groups: list[Group],
    batch_size: int,
    pad_token_id: int,
    progress: bool = False,
    max_tokens: int | None = None,
) -> list[list[tuple[float, int]]]:
    """(summed log-probability of the answer tokens given the prompt, number of answer tokens)
    for each candidate of each (prompt ids, [answer ids per candidate]) group: at most
    `batch_size` prompts per forward, and at most `max_tokens` cached tokens per forward
    (`score_distinct_prompts`).

    Groups with the same prompt ids are scored as one group with all their candidates, so each
    distinct prompt runs once (MultiRC under lm-eval's template: a question's 5 answers, on
    average, are 5 examples with one prompt)."""
    if any(not prompt_ids or not all(answers) for prompt_ids, answers in groups):
        raise ValueError("every candidate needs at least one prompt token and one answer token")
    distinct: dict[tuple[int, ...], Group] = {}
    offsets = []  # per group: its prompt, and where its candidates start in the distinct group
    for prompt_ids, answers in groups:
        shared = distinct.setdefault(tuple(prompt_ids), (prompt_ids, []))
        offsets.append((tuple(prompt_ids), len(shared[1])))
        shared[1].extend(answers)
    scored = dict(
        zip(
            distinct,
            score_distinct_prompts(
                model, list(distinct.values()), batch_size, pad_token_id, progress, max_tokens
            ),
            strict=True,
        )
    )
    return [
        scored[key][start : start + len(answers)]
        for (key, start), (_, answers) in zip(offsets, groups, strict=True)
    ]


def cut_batches(widths: list[int], max_rows: int, max_tokens: int | None) -> list[range]:
    """Consecutive runs of items (in the given order) of at most `max_rows` items whose padded
    size, rows x the widest item's width, stays within `max_tokens` (None: no budget). An item
    wider than the budget makes a batch of its own."""
    batches, start, widest = [], 0, 0
    for i, width in enumerate(widths):
        widest_with = max(widest, width)
        full = i - start == max_rows
        over = max_tokens is not None and widest_with * (i - start + 1) > max_tokens
        if i > start and (full or over):
            batches.append(range(start, i))
            start, widest_with = i, width
        widest = widest_with
    if start < len(widths):
        batches.append(range(start, len(widths)))
    return batches


def has_sliding_window(model: PreTrainedModel) -> bool:
    """Some layer attends to the last `sliding_window` positions only (Mistral, Gemma-2,
    Phi-3). Its mask counts the window in cache slots, so in a right-padded batch the answer
    tokens of a shorter prompt would see the padding slots instead of their prompt's last
    tokens: there a batch holds prompts of one length (`same_width_runs`)."""
    return getattr(model.config.get_text_config(), "sliding_window", None) is not None


def same_width_runs(rows: range, widths: list[int]) -> list[range]:
    """`rows` cut where the width changes."""
    runs, start = [], rows.start
    for k in range(rows.start + 1, rows.stop):
        if widths[k] != widths[k - 1]:
            runs.append(range(start, k))
            start = k
    return [*runs, range(start, rows.stop)]


@torch.no_grad()
def score_distinct_prompts(
    model: PreTrainedModel,
    groups: list[Group],
    batch_size: int,
    pad_token_id: int,
    progress: bool = False,
    max_tokens: int | None = None,
) -> list[list[tuple[float, int]]]:
    """`score_candidates` for groups whose prompts all differ.

    Every prompt runs once for all its candidates, in at most three forwards per batch:
    0. If the batch's prompts share at least `SHARED_PREFIX_MIN` leading tokens (`prompt_order`
       puts such prompts together), the shared part runs once, as one row, keeping its cache.
    1. The prompts of up to `batch_size` examples (longest first, so a batch wastes little on
       padding; right-padded), or their parts after the shared prefix, run keeping their keys
       and values (`past_key_values`) and the logits of one position per row, the last prompt
       token (`logits_to_keep`), which predict the first answer token of every candidate.
       One-token answers end here.
    2. Candidates of two or more tokens (up to 4 x `batch_size` per forward, sorted by length)
       run their answer tokens but the last on a copy of their own prompt's cache; every
       position there predicts an answer token.
    `max_tokens` bounds the key/value cache of every forward: a batch's rows x its padded
    width (shared prefix included), and a candidate forward's rows x (that width + its answer
    steps), whatever `batch_size` allows; a prompt longer than the budget runs alone. Memory
    at the peak is thus one batch's prompt cache plus one candidate forward's (`lomo plan`
    models it). Log-probabilities are taken at answer positions only, never over the prompt.
    Padding inside the cache is masked and positions continue from each prompt's true length,
    so a score equals that of the unpadded sequence, whatever the batching. Every step calls
    the model's forward (ZeRO-3 evaluation counts forward calls)."""
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1 (or None), got {max_tokens}")
    results = [[(0.0, 0)] * len(answers) for _, answers in groups]
    order = prompt_order([prompt_ids for prompt_ids, _ in groups])
    widths = [len(groups[i][0]) for i in order]
    batches = cut_batches(widths, batch_size, max_tokens)
    if has_sliding_window(model):
        batches = [part for rows in batches for part in same_width_runs(rows, widths)]
    for rows in tqdm(batches, desc="scoring", unit="batch", disable=not progress):
        batch = [order[k] for k in rows]
        # One batch per call: its caches are freed before the next batch's are made.
        totals = _score_batch(model, groups, batch, batch_size, pad_token_id, max_tokens)
        for (row, j), total in totals.items():
            results[batch[row]][j] = (total, len(groups[batch[row]][1][j]))
    return results


def _score_batch(
    model: PreTrainedModel,
    groups: list[Group],
    batch: list[int],
    batch_size: int,
    pad_token_id: int,
    max_tokens: int | None,
) -> dict[tuple[int, int], float]:
    """{(row, candidate): summed log-probability} of one batch of prompts (steps 0-2 above)."""
    device = next(model.parameters()).device
    prompt_lengths = torch.tensor([len(groups[i][0]) for i in batch])
    prompt_ids = torch.full((len(batch), int(prompt_lengths.max())), pad_token_id)
    prompt_mask = torch.zeros_like(prompt_ids)
    for row, i in enumerate(batch):
        prompt_ids[row, : prompt_lengths[row]] = torch.tensor(groups[i][0])
        prompt_mask[row, : prompt_lengths[row]] = 1
    shared = shared_prefix_length([groups[i][0] for i in batch])
    # A cache built without the model's config keeps every token in every layer: the model's
    # own would keep only the last `sliding_window` keys of a sliding-window layer (Mistral,
    # Gemma-2), and the copies below assume every layer's keys start at position 0.
    prefix_cache = DynamicCache()
    if shared:
        prefix = model(
            input_ids=prompt_ids[:1, :shared].to(device),
            past_key_values=DynamicCache(),
            use_cache=True,
        )
        # A generator: each layer's rows are made (DynamicCache copies them) one at a time.
        prefix_cache = DynamicCache(
            (
                layer.keys.expand(len(batch), -1, -1, -1),
                layer.values.expand(len(batch), -1, -1, -1),
            )
            for layer in prefix.past_key_values.layers
        )
        del prefix
    output = model(
        input_ids=prompt_ids[:, shared:].to(device),
        attention_mask=prompt_mask.to(device),
        position_ids=torch.arange(shared, prompt_ids.shape[1]).expand(len(batch), -1).to(device),
        past_key_values=prefix_cache,
        use_cache=True,
        logits_to_keep=(prompt_lengths - 1 - shared)[:, None].to(device),
    )
    del prefix_cache
    prompt_cache = output.past_key_values
    first_logprobs = torch.log_softmax(output.logits[:, 0].float(), dim=-1)
    del output
    totals = {}
    for row, i in enumerate(batch):
        for j, answer in enumerate(groups[i][1]):
            totals[row, j] = first_logprobs[row, answer[0]].item()
    del first_logprobs

    longer = [(row, j) for row, j in totals if len(groups[batch[row]][1][j]) > 1]
    longer.sort(key=lambda rj: -len(groups[batch[rj[0]]][1][rj[1]]))
    width = prompt_ids.shape[1]
    steps_of = [len(groups[batch[row]][1][j]) - 1 for row, j in longer]
    chunks = cut_batches([width + steps for steps in steps_of], 4 * batch_size, max_tokens)
    for rows in chunks:
        chunk = [longer[k] for k in rows]
        answers = [groups[batch[row]][1][j] for row, j in chunk]
        sums = _score_answers(
            model, prompt_cache, prompt_mask, prompt_lengths, chunk, answers, pad_token_id
        )
        for (row, j), rest in zip(chunk, sums, strict=True):
            totals[row, j] += rest
    return totals


def _score_answers(
    model: PreTrainedModel,
    prompt_cache: DynamicCache,
    prompt_mask: torch.Tensor,
    prompt_lengths: torch.Tensor,
    chunk: list[tuple[int, int]],
    answers: list[list[int]],
    pad_token_id: int,
) -> list[float]:
    """Summed log-probabilities of the answer tokens after the first, for one forward of
    candidates, each on a copy of its own prompt's cache (freed on return)."""
    device = next(model.parameters()).device
    steps = max(len(a) for a in answers) - 1
    input_ids = torch.full((len(chunk), steps), pad_token_id)
    target_ids = torch.zeros((len(chunk), steps), dtype=torch.long)
    answer_mask = torch.zeros((len(chunk), steps), dtype=torch.bool)
    for k, answer in enumerate(answers):
        input_ids[k, : len(answer) - 1] = torch.tensor(answer[:-1])
        target_ids[k, : len(answer) - 1] = torch.tensor(answer[1:])
        answer_mask[k, : len(answer) - 1] = True
    rows = torch.tensor([row for row, _ in chunk])
    index = rows.to(device)
    # A generator: DynamicCache copies each layer's rows as it takes them, so one copy of the
    # chunk's cache exists, not two.
    cache = DynamicCache((layer.keys[index], layer.values[index]) for layer in prompt_cache.layers)
    logits = model(
        input_ids=input_ids.to(device),
        attention_mask=torch.cat([prompt_mask[rows], answer_mask.long()], 1).to(device),
        position_ids=(prompt_lengths[rows, None] + torch.arange(steps)).to(device),
        past_key_values=cache,
    ).logits
    del cache
    logits = logits.float()
    target_ids, answer_mask = target_ids.to(device), answer_mask.to(device)
    picked = logits.gather(-1, target_ids[..., None]).squeeze(-1)
    token_logprobs = (picked - logits.logsumexp(-1)).masked_fill(~answer_mask, 0.0)
    return token_logprobs.sum(-1).tolist()


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
    max_tokens: int | None = None,
) -> tuple[dict[str, float], list[dict]]:
    """Predict each example's best-scoring candidate; return task metrics and per-example rows
    (idx, gold, pred, one score and token count per candidate). `batch_size` examples and
    `max_tokens` cached tokens (None: no bound) at most per forward."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}: expected one of {REDUCTIONS}")
    eos = [tokenizer.eos_token_id] if "score-eos" in template.quirks else []
    prompts, groups = [], []
    for example in examples:
        prompt, pairs = encode_prompt(task, example, template, tokenizer, max_length)
        prompts.append(prompt)
        quirked = [with_quirks(pair, template) for pair in pairs]
        # encode_pair encodes the prompt alone, so all candidates share the same prompt ids.
        groups.append((quirked[0][0], [answer_ids + eos for _, answer_ids in quirked]))
    was_training = model.training
    model.eval()
    try:
        scored = score_candidates(
            model, groups, batch_size, tokenizer.pad_token_id, progress, max_tokens
        )
    finally:
        model.train(was_training)

    rows, preds = [], []
    for example, prompt, candidates in zip(examples, prompts, scored, strict=True):
        for j, (total, _) in enumerate(candidates):
            if not math.isfinite(total):
                raise FloatingPointError(
                    f"{task.name} example {example['idx']}: candidate {j} has log-likelihood "
                    f"{total}; the model's weights or activations are not finite"
                )
        scores = [total / n if reduction == "mean" else total for total, n in candidates]
        pred = max(range(len(scores)), key=scores.__getitem__)  # first best on ties
        preds.append(pred)
        rows.append(
            {
                "idx": example["idx"],
                "gold": prompt.gold,
                "pred": pred,
                "scores": scores,
                "n_tokens": [n for _, n in candidates],
            }
        )
    return task.metrics(examples, preds), rows


# --- command line ----------------------------------------------------------------------------


def add_parser(subparsers: argparse._SubParsersAction, summary: str) -> None:
    parser = subparsers.add_parser("evaluate", help=summary)
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
    parser.add_argument("--limit", type=argtypes.positive_int, help="only the first N examples")
    parser.add_argument("--batch-size", type=argtypes.positive_int, default=8)
    parser.add_argument(
        "--max-tokens",
        type=argtypes.positive_int,
        help="at most this many cached (prompt + answer) tokens per forward: long prompts make "
        "smaller batches (default: no bound; `lomo plan` says what fits)",
    )
    parser.add_argument("--max-length", type=argtypes.positive_int, default=1024)
    parser.add_argument("--dtype", choices=DTYPES, default="fp32")
    parser.add_argument("--out", required=True, type=Path, help="results JSON (+ .jsonl rows)")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> None:
    # Everything that can fail on bad input runs before the (slow) model load.
    if args.out.suffix != ".json":
        raise ValueError(f"--out must name a .json file, got {args.out}")
    task = get_task(args.task)
    template = get_template(args.template)
    if args.protocol:
        examples = prepare(task.name, args.protocol, args.source, args.data_dir).eval
    else:
        examples = load_split(task.name, args.split, args.source, args.data_dir)
    if args.limit is not None:
        if args.limit < 1:
            raise ValueError(f"--limit must be at least 1, got {args.limit}")
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
        max_tokens=args.max_tokens,
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
