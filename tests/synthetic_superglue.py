"""A synthetic SuperGLUE folder: the layout of ../shared/superglue (one folder per task with
train.jsonl, dev32.jsonl and val.jsonl in the official jsonl format; BoolQ's and ReCoRD's
val.jsonl held back) filled with short made-up rows, so that the tests run every training and
evaluation path on a fresh clone without the real files (tests/paths.py).

The rows follow the official schema of each task exactly (the loaders check every field); their
text is short and varies with the row so prompts differ. Labels cycle through the task's label
set, so every split is balanced. Ids are unique per split and differ between splits, as the
official ids of train (FewGLUE) and dev32 rows, drawn from one split, do. MultiRC's paragraphs
have several questions of several answers each, so examples share prompts and prompt prefixes;
ReCoRD's passages name some entities twice and one inside another ("Hart", "Ann Hart").
Deterministic: the same files on every call.
"""

import json
from pathlib import Path

# Rows per file (MultiRC: paragraphs of QUESTIONS x ANSWERS examples; ReCoRD: one query each).
SPLIT_ROWS = {"train": 32, "dev32": 32, "val": 48}
# The first idx of each split: official val ids start at 0, train and dev32 ids are spread.
FIRST_IDX = {"train": 1000, "dev32": 5000, "val": 0}
# Held back in ../shared/superglue, so held back here too (test_superglue_data checks the error).
HELD_BACK = frozenset({("BoolQ", "val"), ("ReCoRD", "val")})
QUESTIONS, ANSWERS = 4, 3  # per MultiRC paragraph, as many as in real ones

NAMES = ["Ann", "Ben", "Cleo", "Dev", "Eli", "Fay", "Gus", "Hana"]
PLACES = ["Leeds", "Oslo", "Lima", "Pune", "Turin", "Quito"]
THINGS = ["kite", "lamp", "drum", "boat", "coat", "map", "cake"]
SURNAMES = ["Hart", "Moss", "Reyes"]


def pick(words: list[str], i: int) -> str:
    return words[i % len(words)]


def boolq(i: int, idx: int) -> dict:
    name, place = pick(NAMES, i), pick(PLACES, i + 1)
    return {
        "question": f"does {name.lower()} live in {place.lower()}",
        "passage": f"{name} -- {name} moved to {place} in year {i} and kept a {pick(THINGS, i)}.",
        "idx": idx,
        "label": i % 2 == 0,
    }


def cb(i: int, idx: int) -> dict:
    name, thing = pick(NAMES, i), pick(THINGS, i)
    return {
        "premise": f"A: Did {name} bring the {thing}? B: I think {name} did, number {i}.",
        "hypothesis": f"{name} brought the {thing}",
        "label": ("entailment", "contradiction", "neutral")[i % 3],
        "idx": idx,
    }


def copa(i: int, idx: int) -> dict:
    thing = pick(THINGS, i)
    return {
        "premise": f"The {thing} fell {i} times.",
        "choice1": f"The {thing} was wet.",
        "choice2": "I dropped it.",
        "question": ("cause", "effect")[i // 2 % 2],
        "label": i % 2,
        "idx": idx,
    }


def rte(i: int, idx: int) -> dict:
    name, place = pick(NAMES, i), pick(PLACES, i)
    # Premises of three lengths, the longest over 96 tokens (every 4 rows: short, middle, long,
    # long): batches mix lengths, and prompts are cut at the max_length of the tests.
    more = f" The {pick(THINGS, i)} had been there for many years." * (0, 5, 10, 10)[i % 4]
    return {
        "premise": f"{name} was seen in {place} on day {i}, near the old {pick(THINGS, i)}.{more}",
        "hypothesis": f"{name} was in {place}.",
        "label": ("entailment", "not_entailment")[i % 2],
        "idx": idx,
    }


def wic(i: int, idx: int) -> dict:
    word = pick(THINGS, i)
    sentence1 = f"The {word} is red."
    sentence2 = f"Row {i}: a big {word} here."
    start1, start2 = sentence1.index(word), sentence2.index(word)
    return {
        "word": word,
        "sentence1": sentence1,
        "sentence2": sentence2,
        "idx": idx,
        "label": i % 2 == 0,
        "start1": start1,
        "start2": start2,
        "end1": start1 + len(word),
        "end2": start2 + len(word),
        "version": 1.1,
    }


def wsc(i: int, idx: int) -> dict:
    # Official WSC text is tokenised ("him .") and span indices count words.
    name, other = pick(NAMES, i), pick(NAMES, i + 3)
    text = f"{name} gave {other} a {pick(THINGS, i)} because she was kind , day {i} ."
    return {
        "text": text,
        "target": {"span2_index": 6, "span1_index": 0, "span1_text": name, "span2_text": "she"},
        "idx": idx,
        "label": i % 2 == 0,
    }


def multirc(i: int, idx: int) -> dict:
    name, place = pick(NAMES, i), pick(PLACES, i)
    # About 80 tokens: examples share it (and their question) as a prompt prefix, and the
    # prompts are long enough to be cut in the tests that score with a small max_length.
    text = (
        f"{name} lived in {place} for {i + 2} years. {name} had a {pick(THINGS, i)} and a "
        f"{pick(THINGS, i + 1)}. Every spring {name} walked to the river with friends, and "
        f"every autumn they came back to {place} with stories. One year the river was too "
        f"high, so {name} stayed home and painted the {pick(THINGS, i + 2)} blue instead. "
    )
    questions = []
    for q in range(QUESTIONS):
        answers = [
            {
                "text": f"{q + a + i}",
                "idx": (idx * QUESTIONS + q) * ANSWERS + a,
                "label": (q + a) % 2,
            }
            for a in range(ANSWERS)
        ]
        question = f"How many years did {name} stay, question {q}?"
        questions.append({"question": question, "answers": answers, "idx": idx * QUESTIONS + q})
    return {"idx": idx, "version": 1.1, "passage": {"text": text, "questions": questions}}


def spans(text: str, entities: list[str]) -> list[dict]:
    """Every mention of each entity, with the official inclusive `end`."""
    found = []
    for entity in entities:
        start = text.find(entity)
        while start != -1:
            found.append({"start": start, "end": start + len(entity) - 1})
            start = text.find(entity, start + 1)
    return found


def record(i: int, idx: int) -> dict:
    first, last, place = pick(NAMES, i), pick(SURNAMES, i), pick(PLACES, i)
    person = f"{first} {last}"
    text = (
        f"By {pick(NAMES, i + 2)} Lee. {person} from {place} won a race on day {i}. "
        f"{last} thanked {place}.\n@highlight\n{person} won a race\n@highlight\nThe race was fast"
    )
    answer = (person, place)[i % 2]
    start = text.index(answer)
    query = f"Fans in {place} cheered for @placeholder."
    if answer == place:
        query = f"{person} runs in @placeholder."
    return {
        "source": "Synthetic",
        "passage": {
            "text": text,
            "entities": spans(text, [f"{pick(NAMES, i + 2)} Lee", person, last, place]),
        },
        "qas": [
            {
                "query": query,
                "answers": [{"start": start, "end": start + len(answer) - 1, "text": answer}],
                "idx": idx,
            }
        ],
        "idx": idx,
    }


ROWS = {
    "BoolQ": boolq,
    "CB": cb,
    "COPA": copa,
    "MultiRC": multirc,
    "ReCoRD": record,
    "RTE": rte,
    "WiC": wic,
    "WSC": wsc,
}


def write_superglue(
    root: Path, held_back: frozenset = HELD_BACK, rows: dict[str, int] = SPLIT_ROWS
) -> Path:
    """Write the synthetic folder at `root` (created) and return it; `rows` sets the rows per
    split file, `held_back` the (folder, split) files left out."""
    for folder, make_row in ROWS.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for split, n in rows.items():
            if (folder, split) in held_back:
                continue
            lines = [json.dumps(make_row(i, FIRST_IDX[split] + i)) + "\n" for i in range(n)]
            (root / folder / f"{split}.jsonl").write_text("".join(lines))
    return root
