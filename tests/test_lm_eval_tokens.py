"""Our `lm-eval` template gives lm-evaluation-harness's tokens: for every local example of all 8
tasks, (context ids, continuation ids) equal lm-eval's `_encode_pair` with the SmolLM2
tokenizer. The other templates keep their own rule (only spaces move), tested unchanged."""

import pytest
from paths import DATA_DIR

from lomo.train.evaluate import encode_pair, encode_prompt
from lomo.train.models import SMOLLM2, load_tokenizer
from tasks.superglue import TASKS, get_template, load_split


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(SMOLLM2)


def lm_eval_encode_pairs(tokenizer, requests: list[tuple[str, str]]) -> list[tuple[list, list]]:
    """lm-evaluation-harness's TemplateLM._encode_pair for a causal model (lm_eval/api/model.py,
    0.4.x), with HFLM.tok_encode's default special tokens, transcribed from its source; the
    encodings of many requests are computed in one batch call (the same ids as one by one)."""
    moved = []
    for context, continuation in requests:
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces > 0:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        moved.append((context, continuation))
    contexts = tokenizer([c for c, _ in moved]).input_ids
    wholes = tokenizer([c + x for c, x in moved]).input_ids
    return [(c, w[len(c) :]) for c, w in zip(contexts, wholes, strict=True)]


@pytest.mark.real_data
# MultiRC (10004 pairs, 20 s) is slow (-m slow); the other seven run in the default suite
@pytest.mark.parametrize(
    "task", [pytest.param(t, marks=[pytest.mark.slow] * (t == "multirc")) for t in sorted(TASKS)]
)
def test_lm_eval_template_is_token_identical_to_lm_eval(tokenizer, task):
    template = get_template("lm-eval")
    splits = [
        s for s in ("train", "val") if (DATA_DIR / TASKS[task].folder / f"{s}.jsonl").exists()
    ]
    requests, ours, where = [], [], []
    for split in splits:
        for example in load_split(task, split, "local", DATA_DIR):
            prompt, pairs = encode_prompt(TASKS[task], example, template, tokenizer, 10**6)
            requests += [(prompt.text, candidate) for candidate in prompt.candidates]
            ours += pairs
            where += [(split, example["idx"], candidate) for candidate in prompt.candidates]
    reference = lm_eval_encode_pairs(tokenizer, requests)
    different = [w for w, a, b in zip(where, ours, reference, strict=True) if a != b]
    assert not different, f"{len(different)} of {len(ours)} pairs differ, e.g. {different[:3]}"
    assert len(ours) > 0


def test_other_templates_move_only_spaces(tokenizer):
    # ReCoRD's lm-eval prompt ends in a newline: lm-eval moves it into the answer, ours keep it.
    lomo, lm_eval = get_template("lomo"), get_template("lm-eval")
    kept, answer = encode_pair(tokenizer, "Passage.\n", " Yes", lomo)
    moved, answer_lm_eval = encode_pair(tokenizer, "Passage.\n", " Yes", lm_eval)
    assert tokenizer.decode(kept) == "Passage.\n" and tokenizer.decode(answer) == " Yes"
    assert tokenizer.decode(moved) == "Passage." and tokenizer.decode(answer_lm_eval) == "\n Yes"
    # a token across the boundary: ours encodes the answer apart, lm-eval takes the tail
    assert tokenizer.decode(encode_pair(tokenizer, "Hello wor", "ld", lomo)[1]) == "ld"
