import contextlib
import functools
import json

import pytest
import torch
from examples import real_example
from paths import DATA_DIR

import lomo.train.evaluate as evaluate_module
from lomo.cli import main as cli
from lomo.train.evaluate import (
    IGNORE_INDEX,
    encode_pair,
    encode_prompt,
    encode_train_example,
    evaluate,
    score_candidates,
    with_quirks,
)
from lomo.train.models import load_model, load_tokenizer
from tasks.superglue import DataError, get_task, get_template, load_split

EOS = "<|im_end|>"  # the SmolLM2 tokenizer's EOS, also used by tiny-llama


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("tiny-llama")


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-llama")


def answer_part(tokenizer, encoded):
    labels = encoded["labels"]
    n_masked = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    assert all(label == IGNORE_INDEX for label in labels[:n_masked])
    assert labels[n_masked:] == encoded["input_ids"][n_masked:]
    return tokenizer.decode(encoded["input_ids"][:n_masked]), tokenizer.decode(labels[n_masked:])


# The gold answer of each real example (see test_superglue_prompts), with the space that ends
# the lomo prompt ("Answer: ") moved in front of it.
LOMO_ANSWERS = {
    "boolq": " Yes",
    "cb": " No",
    "copa": " I inhaled smoke.",
    "multirc": " Yes",
    "record": " Shane Reeves",
    "rte": " No",
    "wic": " Yes",
    "wsc": " No",
}


@pytest.mark.real_data
@pytest.mark.parametrize("task", list(LOMO_ANSWERS))
def test_only_answer_and_eos_are_trained(tokenizer, task):
    example = real_example(task)
    template = get_template("lomo")
    encoded = encode_train_example(get_task(task), example, template, tokenizer)
    prompt, answer = answer_part(tokenizer, encoded)
    assert answer == LOMO_ANSWERS[task] + EOS
    assert prompt == get_task(task).render(example, template).text.rstrip(" ")


@pytest.mark.real_data
@pytest.mark.parametrize(
    ("task", "template", "expected"),
    [
        ("boolq", "lm-eval", " yes"),
        ("rte", "mezo", "No"),
        ("copa", "mezo", " I inhaled smoke."),  # the prompt's final space moves here
        # lm-eval moves all the prompt's trailing whitespace, ReCoRD's newline included
        ("record", "lm-eval", "\n   - After undergoing surgery, Mr Shane Reeves spent a month"),
    ],
)
def test_masking_with_other_templates(tokenizer, task, template, expected):
    encoded = encode_train_example(
        get_task(task), real_example(task), get_template(template), tokenizer
    )
    _, answer = answer_part(tokenizer, encoded)
    assert answer.startswith(expected) and answer.endswith(EOS)


@pytest.mark.real_data
def test_last_prompt_token_quirk_trains_the_last_prompt_token(tokenizer):
    task, example = get_task("boolq"), real_example("boolq")
    plain = encode_train_example(task, example, get_template("lomo"), tokenizer)
    quirk = encode_train_example(task, example, get_template("lomo+last-prompt-token"), tokenizer)
    assert quirk["input_ids"] == plain["input_ids"]
    assert answer_part(tokenizer, quirk)[1] == ": Yes" + EOS


@pytest.mark.real_data
def test_long_input_loses_the_end_of_the_passage_only(tokenizer):
    task, example = get_task("boolq"), real_example("boolq")
    encoded = encode_train_example(task, example, get_template("lomo"), tokenizer, max_length=30)
    assert len(encoded["input_ids"]) <= 30
    prompt, answer = answer_part(tokenizer, encoded)
    assert answer == " Yes" + EOS
    question = " is northwest florida state college a 4 year college\nAnswer:"
    assert prompt.endswith(question)
    passage = prompt[: -len(question)]
    assert 10 < len(passage) and example["passage"].startswith(passage)


@pytest.mark.real_data
def test_scoring_prompt_fits_longest_candidate(tokenizer):
    task, example = get_task("record"), real_example("record")
    prompt, pairs = encode_prompt(task, example, get_template("mezo"), tokenizer, max_length=60)
    assert max(len(p) + len(a) for p, a in pairs) + 1 <= 60
    assert prompt.text.startswith("By Leon Watson")
    assert all(c.startswith(" After undergoing surgery, Mr ") for c in prompt.candidates)


@pytest.mark.real_data
def test_too_long_without_a_context_field(tokenizer):
    with pytest.raises(ValueError, match="wic example 239: .* no context field to cut"):
        encode_train_example(
            get_task("wic"), real_example("wic"), get_template("lomo"), tokenizer, max_length=10
        )


def test_encode_pair_when_a_token_spans_the_boundary(tokenizer):
    # "Hello world" is two BPE tokens, so "wor" + "ld" cannot be split at the boundary.
    prompt_ids, answer_ids = encode_pair(tokenizer, "Hello wor", "ld")
    assert tokenizer.decode(prompt_ids) == "Hello wor"
    assert tokenizer.decode(answer_ids) == "ld"


def reference_scores(model, tokenizer, text, candidates):
    """One sequence at a time, no padding: summed log-probs of each candidate's tokens."""
    results = []
    for candidate in candidates:
        context = text.rstrip(" ")
        full = tokenizer(text + candidate).input_ids
        n_answer = len(full) - len(tokenizer(context).input_ids)
        with torch.no_grad():
            logits = model(torch.tensor([full])).logits[0]
        logprobs = torch.log_softmax(logits[:-1].double(), dim=-1)
        token_logprobs = logprobs[torch.arange(len(full) - 1), torch.tensor(full[1:])]
        results.append((token_logprobs[-n_answer:].sum().item(), n_answer))
    return results


@pytest.fixture(scope="module")
def scoring_cases(model, tokenizer):
    """COPA, CB (three options) and ReCoRD (several entities) examples with reference scores."""
    cases = []
    for name, split, positions in (
        ("copa", "val", range(5)),
        ("cb", "val", range(3)),
        ("record", "train", [12]),
    ):
        task = get_task(name)
        examples = [load_split(task.name, split, "local", DATA_DIR)[i] for i in positions]
        prompts = [task.render(example, get_template("lomo")) for example in examples]
        expected = [reference_scores(model, tokenizer, p.text, p.candidates) for p in prompts]
        cases.append((task, examples, prompts, expected))
    return cases


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_batched_scores_equal_a_plain_loop(model, tokenizer, scoring_cases, reduction):
    for task, examples, prompts, expected in scoring_cases:
        _, rows = evaluate(model, tokenizer, task, examples, get_template("lomo"), 4, reduction)
        for example, prompt, reference, row in zip(examples, prompts, expected, rows, strict=True):
            scores = [total / n if reduction == "mean" else total for total, n in reference]
            assert row["scores"] == pytest.approx(scores, abs=1e-5)
            assert row["n_tokens"] == [n for _, n in reference]
            assert row["pred"] == max(range(len(scores)), key=scores.__getitem__)
            assert (row["idx"], row["gold"]) == (example["idx"], prompt.gold)


def test_score_eos_quirk_adds_the_eos_token(model, tokenizer):
    task, examples = get_task("rte"), load_split("rte", "val", "local", DATA_DIR)[:2]
    _, plain = evaluate(model, tokenizer, task, examples, get_template("lomo"), 2, "sum")
    _, quirk = evaluate(model, tokenizer, task, examples, get_template("lomo+score-eos"), 2, "sum")
    for p, q in zip(plain, quirk, strict=True):
        assert q["n_tokens"] == [n + 1 for n in p["n_tokens"]]
        assert all(qs < ps for ps, qs in zip(p["scores"], q["scores"], strict=True))


def unshared_scores(model, tokenizer, task, examples, template, max_length):
    """The scorer before prompt sharing, written plainly: every candidate re-runs its whole
    prompt, alone (no padding). (summed log-probability, number of answer tokens) per candidate."""
    eos = [tokenizer.eos_token_id] if "score-eos" in template.quirks else []
    results = []
    for example in examples:
        _, pairs = encode_prompt(task, example, template, tokenizer, max_length)
        candidates = []
        for prompt_ids, answer_ids in (with_quirks(pair, template) for pair in pairs):
            answer = answer_ids + eos
            with torch.no_grad():
                logits = model(torch.tensor([prompt_ids + answer])).logits[0]
            # Logits at position t predict token t + 1.
            logprobs = torch.log_softmax(logits[len(prompt_ids) - 1 : -1].double(), dim=-1)
            total = logprobs[torch.arange(len(answer)), torch.tensor(answer)].sum().item()
            candidates.append((total, len(answer)))
        results.append(candidates)
    return results


# (task, split, first examples, template, max_length): prompts covering one-token and
# multi-token answers, 2 to 11 candidates, both quirks, and prompts cut to fit max_length.
SHARED_PREFIX_CASES = [
    ("rte", "val", 12, "lomo", 1024),
    ("rte", "val", 12, "lomo+score-eos", 1024),
    ("cb", "val", 9, "lomo+last-prompt-token+score-eos", 1024),
    ("wic", "val", 12, "lm-eval", 1024),
    ("copa", "val", 9, "mezo", 1024),
    ("multirc", "val", 9, "lm-eval", 1024),
    ("multirc", "val", 9, "lomo+last-prompt-token", 96),
    ("record", "train", 2, "lomo", 1024),
    ("record", "train", 3, "mezo", 128),
]


def check_against_reference(model, tokenizer, case, batch_size):
    name, split, n, template, max_length = case
    task, template = get_task(name), get_template(template)
    examples = load_split(task.name, split, "local", DATA_DIR)[:n]
    expected = unshared_scores(model, tokenizer, task, examples, template, max_length)
    for reduction in ("sum", "mean"):
        _, rows = evaluate(
            model, tokenizer, task, examples, template, batch_size, reduction, max_length
        )
        for row, reference in zip(rows, expected, strict=True):
            scores = [total / n if reduction == "mean" else total for total, n in reference]
            assert row["n_tokens"] == [n for _, n in reference]
            assert row["scores"] == pytest.approx(scores, rel=1e-5, abs=1e-5)
            assert row["pred"] == max(range(len(scores)), key=scores.__getitem__)


@pytest.mark.parametrize("case", SHARED_PREFIX_CASES, ids=lambda c: f"{c[0]}-{c[3]}-{c[4]}")
def test_shared_prompt_scores_equal_the_plain_scorer(model, tokenizer, case):
    # Batch size 4: batches mix prompt lengths and candidate counts, and the last one is short.
    check_against_reference(model, tokenizer, case, batch_size=4)


def test_shared_prompt_scores_with_eager_attention(tokenizer):
    eager = load_model("tiny-llama", attn_implementation="eager")
    check_against_reference(eager, tokenizer, SHARED_PREFIX_CASES[6], batch_size=3)


def test_shared_prompt_scores_one_example_at_a_time(model, tokenizer):
    # ReCoRD's many multi-token entities then continue in several forwards of 4 candidates.
    check_against_reference(model, tokenizer, SHARED_PREFIX_CASES[8], batch_size=1)


@functools.cache
def smollm2():
    return load_model("smollm2-135m")


@pytest.mark.slow
@pytest.mark.parametrize("case", SHARED_PREFIX_CASES, ids=lambda c: f"{c[0]}-{c[3]}-{c[4]}")
def test_shared_prompt_scores_equal_the_plain_scorer_smollm2(tokenizer, case):
    check_against_reference(smollm2(), tokenizer, case, batch_size=4)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_one_token_prompt_alone_and_beside_longer_ones(model, batch_size):
    # A one-token prompt: its only position's logits score the first answer tokens.
    groups = [([5], [[7, 8], [9]]), ([3, 4, 5, 6], [[7], [11, 12, 13]]), ([2, 6], [[1]])]
    scored = score_candidates(model, groups, batch_size, pad_token_id=0)
    for (prompt_ids, answers), candidates in zip(groups, scored, strict=True):
        for answer_ids, (total, n) in zip(answers, candidates, strict=True):
            sequence = torch.tensor(prompt_ids + answer_ids)
            with torch.no_grad():
                logprobs = torch.log_softmax(model(sequence[None]).logits[0, :-1].double(), -1)
            expected = logprobs[torch.arange(len(sequence) - 1), sequence[1:]][-n:].sum()
            assert (total, n) == (pytest.approx(expected.item(), abs=1e-5), len(answer_ids))


def test_examples_with_the_same_prompt_run_it_once(model, tokenizer):
    # MultiRC under lm-eval's template: a question's answers are examples with one prompt.
    task, template = get_task("multirc"), get_template("lm-eval")
    examples = load_split(task.name, "val", "local", DATA_DIR)[:12]
    prompts = {task.render(example, template).text for example in examples}
    assert 1 < len(prompts) < len(examples)
    with counted_forwards(model) as forwards:
        check_against_reference(model, tokenizer, ("multirc", "val", 12, "lm-eval", 1024), 4)
    prompt_rows = sum(rows for kind, rows in forwards if kind == "prompts")
    assert prompt_rows == 2 * len(prompts)  # once per distinct prompt, per reduction


@contextlib.contextmanager
def counted_forwards(model):
    """(kind, rows) of the scorer's forwards: 'prompts' (they keep the last prompt token's
    logits), 'prefix' (a shared prefix: an empty cache in, all logits) or 'answers' (on a
    cache)."""
    forwards = []

    def count(module, args, kwargs):
        if "input_ids" not in kwargs:  # the reference scorer's calls
            return
        if kwargs.get("logits_to_keep") is not None:
            kind = "prompts"
        else:
            cache = kwargs.get("past_key_values")
            kind = "prefix" if cache is None or cache.get_seq_length() == 0 else "answers"
        forwards.append((kind, kwargs["input_ids"].shape[0]))

    handle = model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        yield forwards
    finally:
        handle.remove()


@pytest.mark.parametrize("template", ["lomo", "lm-eval"])
def test_a_shared_passage_runs_once_per_batch(model, tokenizer, template):
    # MultiRC: the examples of a paragraph share it (and, under the official template, the
    # question) but differ after it: the batch runs the common part as one row.
    with counted_forwards(model) as forwards:
        check_against_reference(model, tokenizer, ("multirc", "val", 12, template, 1024), 4)
    assert ("prefix", 1) in forwards
    assert all(rows == 1 for kind, rows in forwards if kind == "prefix")


def test_prompt_order_and_shared_prefix_by_hand(monkeypatch):
    monkeypatch.setattr(evaluate_module, "SHARED_PREFIX_MIN", 3)
    passage = [7, 7, 7, 7]
    prompts = [[1, 2], passage + [5], [1, 2, 3, 4, 5, 6], passage + [5, 6, 8], [9, 9, 9]]
    # families by the first 3 tokens: {1, 3} (longest 7), {2} (6), {0} (2), {4} (3)
    assert evaluate_module.prompt_order(prompts) == [3, 1, 2, 4, 0]
    assert evaluate_module.shared_prefix_length([prompts[3], prompts[1]]) == 4
    assert evaluate_module.shared_prefix_length([passage + [5], passage + [5, 6]]) == 4
    assert evaluate_module.shared_prefix_length([passage, passage + [1]]) == 3  # one own token
    assert evaluate_module.shared_prefix_length([[7, 7, 1, 1], [7, 7, 2, 2]]) == 0  # below 3


def test_scoring_needs_prompt_and_answer_tokens(model):
    with pytest.raises(ValueError, match="at least one prompt token and one answer token"):
        score_candidates(model, [([], [[1]])], batch_size=2, pad_token_id=0)
    with pytest.raises(ValueError, match="at least one prompt token and one answer token"):
        score_candidates(model, [([1, 2], [[3], []])], batch_size=2, pad_token_id=0)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_scores_are_refused(tokenizer, value):
    broken = load_model("tiny-llama")
    with torch.no_grad():
        broken.model.norm.weight[3] = value
    task = get_task("rte")
    examples = load_split(task.name, "val", "local", DATA_DIR)[:3]
    with pytest.raises(FloatingPointError, match="rte example 0: candidate 0 has log-likeli"):
        evaluate(broken, tokenizer, task, examples, get_template("lomo"))


def test_evaluate_restores_training_mode(model, tokenizer):
    model.train()
    examples = load_split("copa", "val", "local", DATA_DIR)[:1]
    evaluate(model, tokenizer, get_task("copa"), examples, get_template("lomo"))
    assert model.training
    model.eval()


def test_evaluate_cli_writes_results_and_predictions(tmp_path):
    out = tmp_path / "copa.json"
    args = ["evaluate", "--model", "tiny-llama", "--task", "copa", "--data-dir", str(DATA_DIR)]
    cli(args + ["--template", "lomo+score-eos", "--limit", "3", "--out", str(out)])
    summary = json.loads(out.read_text())
    assert summary["model"] == "tiny-llama"
    assert summary["template"] == "lomo+score-eos"
    assert (summary["task"], summary["split"], summary["n"]) == ("copa", "val", 3)
    rows = [json.loads(line) for line in (tmp_path / "copa.jsonl").read_text().splitlines()]
    assert [row["idx"] for row in rows] == [0, 1, 2]
    assert all(len(row["scores"]) == 2 for row in rows)
    # each row's prediction is its best-scoring option; the accuracy counts them by hand
    assert all(row["pred"] == row["scores"].index(max(row["scores"])) for row in rows)
    gold = [ex["label"] for ex in load_split("copa", "val", "local", DATA_DIR)[:3]]
    assert [row["gold"] for row in rows] == gold
    right = sum(row["pred"] == g for row, g in zip(rows, gold, strict=True))
    assert summary["metrics"]["accuracy"] == pytest.approx(right / 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copa.json", "copa.jsonl"]


@pytest.mark.parametrize(
    ("flags", "error", "message"),
    [
        (["--task", "mnli"], ValueError, "unknown task 'mnli'"),
        (["--task", "copa", "--template", "gpt3"], ValueError, "unknown template 'gpt3'"),
        (["--task", "boolq"], FileNotFoundError, "BoolQ/val.jsonl does not exist"),
    ],
)
def test_evaluate_cli_bad_input_writes_nothing(tmp_path, flags, error, message):
    # --debug: the exception itself (without it, one line: tests/test_cli_errors.py)
    args = ["evaluate", "--debug", "--model", "tiny-llama", "--data-dir", str(DATA_DIR)]
    with pytest.raises(error, match=message):
        cli(args + flags + ["--out", str(tmp_path / "r.json")])
    assert list(tmp_path.iterdir()) == []


def test_evaluate_cli_malformed_data_writes_nothing(tmp_path):
    (tmp_path / "data" / "WSC").mkdir(parents=True)
    (tmp_path / "data" / "WSC" / "val.jsonl").write_text("{oops\n")
    args = ["evaluate", "--debug", "--model", "tiny-llama", "--task", "wsc"]
    with pytest.raises(DataError, match="WSC/val.jsonl:1: malformed JSON"):
        cli(args + ["--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "r.json")])
    assert not (tmp_path / "r.json").exists()


@pytest.mark.slow
@pytest.mark.real_data
def test_smollm2_zero_shot_copa_beats_chance(tmp_path):
    out = tmp_path / "copa.json"
    args = ["evaluate", "--model", "smollm2-135m", "--task", "copa", "--data-dir", str(DATA_DIR)]
    cli(args + ["--out", str(out)])
    assert json.loads(out.read_text())["metrics"]["accuracy"] >= 0.6  # 0.67 when recorded


def test_cut_batches_by_hand():
    cut = evaluate_module.cut_batches
    widths = [9, 7, 7, 5, 3, 3, 3, 1]
    assert [list(b) for b in cut(widths, 3, None)] == [[0, 1, 2], [3, 4, 5], [6, 7]]
    # rows x the widest width within 14 tokens: 9 alone (9 + 7 > 14 as 2 x 9), then 7 + 7
    assert [list(b) for b in cut(widths, 3, 14)] == [[0], [1, 2], [3, 4], [5, 6, 7]]
    # an item wider than the budget runs alone
    assert [list(b) for b in cut([20, 3, 30], 4, 10)] == [[0], [1], [2]]
    assert cut([], 4, 10) == []


@contextlib.contextmanager
def cached_tokens(model):
    """Rows x (cached + new positions) of every forward of the scorer."""
    sizes = []

    def count(module, args, kwargs):
        if "input_ids" in kwargs:
            cache = kwargs.get("past_key_values")
            past = cache.get_seq_length() if cache is not None else 0
            rows, new = kwargs["input_ids"].shape
            sizes.append(rows * (past + new))

    handle = model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        yield sizes
    finally:
        handle.remove()


# (case, eval batch, token budget): budgets below one prompt, around a few, and above a batch
@pytest.mark.parametrize(
    "case, batch_size, max_tokens",
    [
        (SHARED_PREFIX_CASES[5], 4, 120),  # MultiRC lm-eval: ~100-token prompts, shared passage
        (SHARED_PREFIX_CASES[5], 16, 700),
        (SHARED_PREFIX_CASES[6], 8, 20),  # below any prompt: one prompt, one candidate a forward
        (SHARED_PREFIX_CASES[8], 2, 150),  # ReCoRD: many multi-token candidates
        (SHARED_PREFIX_CASES[4], 16, 64),  # COPA: multi-token answers, short prompts
    ],
    ids=["multirc-120", "multirc-700", "multirc96-20", "record-150", "copa-64"],
)
def test_token_budget_bounds_every_forward_and_keeps_the_scores(
    model, tokenizer, case, batch_size, max_tokens
):
    """Scores equal the plain scorer's whatever the budget; a forward caches at most the budget,
    unless it is one prompt (or one candidate) that alone exceeds it."""
    name, split, n, template, max_length = case
    task, template = get_task(name), get_template(template)
    examples = load_split(task.name, split, "local", DATA_DIR)[:n]
    expected = unshared_scores(model, tokenizer, task, examples, template, max_length)
    with cached_tokens(model) as sizes, counted_forwards(model) as forwards:
        _, rows = evaluate(
            model,
            tokenizer,
            task,
            examples,
            template,
            batch_size,
            "sum",
            max_length,
            max_tokens=max_tokens,
        )
    for row, reference in zip(rows, expected, strict=True):
        assert row["scores"] == pytest.approx([t for t, _ in reference], rel=1e-5, abs=1e-5)
    assert len(sizes) == len(forwards)
    for size, (kind, n_rows) in zip(sizes, forwards, strict=True):
        assert size <= max_tokens or n_rows == 1, (kind, n_rows, size)
    with counted_forwards(model) as unbounded:
        evaluate(model, tokenizer, task, examples, template, batch_size, "sum", max_length)
    if max_tokens < 100:  # the budget made more, smaller forwards
        assert len(forwards) > len(unbounded)
