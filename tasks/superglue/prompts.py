"""Prompt templates: one function per task per template set; each task's declaration
(tasks.py) lists its functions by template name.

A template function takes a record and the `Template` (its name and quirks) and returns the
prompt text and one candidate answer string per option (per label id, or per entity for
ReCoRD); prompt + candidate is the full scored text. The task's `gold` function gives the index
of the right candidate.

Template sets:
- `lomo`: the official LOMO code (src/mydatasets.py, src/prompts.py). Prompt parts end in
  "\\n", then "Answer: " and the label word; COPA appends the raw choice to "{premise} so "
  / "{premise} because ". CB is commented out in the official code; its commented-out
  template is used. ReCoRD follows the official code (the entity itself is the answer after
  'What is the "@placeholder"?'); the official code also drops the alternative gold entities
  from the candidates, which we do not (ReCoRD is scored max-over-gold, and the paper did not
  report it). Opt-in quirks, appended to the name with "+":
    `pronuon`            WSC says "pronuon", as the official code does.
    `last-prompt-token`  the last prompt token stays in the training loss (official off-by-one).
    `score-eos`          candidates are scored with the EOS token after them, as the official
                         evaluation does.
- `mezo`: MeZO large_models/templates.py (BoolQ: BoolQTemplateV3, ReCoRD: ReCoRDTemplateGPT3,
  WSC uses the plain `wsc` data here, not `wsc.fixed`).
- `lm-eval`: lm-evaluation-harness 0.4.x default SuperGLUE tasks (super-glue-lm-eval-v1),
  byte for byte: the prompt is its `doc_to_text`, each candidate its `target_delimiter` (" ")
  followed by a `doc_to_choice` entry, the gold its `doc_to_target`. That includes its quirks:
  COPA's choices already start with a space, so candidates start with two (ReCoRD's bullet
  "  - " gets a third); MultiRC's choices are ordered (yes, no) while label 1 means the
  answer is correct, so the gold candidate is "... no" for a correct answer; WSC reads the
  `wsc.fixed` rows (see `lmeval_wsc`).
- `lm-eval-clean`: `lm-eval` without its delimiter and order quirks: COPA candidates start
  with one space, ReCoRD's with the bullet "  - " (lm-eval: three spaces), MultiRC's follow
  the label meaning (no, yes).
"""

import re
from collections.abc import Callable
from dataclasses import dataclass

QUIRKS = ("last-prompt-token", "pronuon", "score-eos")
YES_NO = ["No", "Yes"]  # label 0 = False, 1 = True


@dataclass(frozen=True)
class Template:
    name: str
    quirks: frozenset[str] = frozenset()

    @property
    def id(self) -> str:
        return "+".join([self.name, *sorted(self.quirks)])


@dataclass(frozen=True)
class Prompt:
    text: str
    candidates: list[str]
    gold: int


# --- lomo ------------------------------------------------------------------------------------


def lomo_answer(*parts: str) -> str:
    return "".join(f"{part}\n" for part in parts) + "Answer: "


def lomo_boolq(ex: dict, t: Template) -> tuple[str, list[str]]:
    return lomo_answer(f"{ex['passage']} {ex['question']}"), YES_NO


def lomo_cb(ex: dict, t: Template) -> tuple[str, list[str]]:
    text = f'Suppose {ex["premise"]} Can we infer that "{ex["hypothesis"]}"? Yes, No, or Maybe?'
    return lomo_answer(text), ["Yes", "No", "Maybe"]


def lomo_copa(ex: dict, t: Template) -> tuple[str, list[str]]:
    joiner = "so" if ex["question"] == "effect" else "because"
    return f"{ex['premise']} {joiner} ", [ex["choice1"], ex["choice2"]]


def lomo_multirc(ex: dict, t: Template) -> tuple[str, list[str]]:
    question = f'I found this answer "{ex["answer"]}". Is that correct? Yes or No?'
    return lomo_answer(ex["paragraph"], f"Question: {ex['question']}", question), YES_NO


def lomo_record(ex: dict, t: Template) -> tuple[str, list[str]]:
    passage = ex["passage"].replace("@highlight\n", "- ")
    text = lomo_answer(passage, ex["query"], 'Question: What is the "@placeholder"?')
    return text, list(ex["entities"])


def lomo_rte(ex: dict, t: Template) -> tuple[str, list[str]]:
    question = f'Does this mean that "{ex["hypothesis"]}" is true? Yes or No?'
    return lomo_answer(ex["premise"], question), ["Yes", "No"]


def lomo_wic(ex: dict, t: Template) -> tuple[str, list[str]]:
    word = ex["word"]
    question = f'Does the word "{word}" have the same meaning in these two sentences? Yes, No?'
    return lomo_answer(question, ex["sentence1"], ex["sentence2"]), YES_NO


def lomo_wsc(ex: dict, t: Template) -> tuple[str, list[str]]:
    pronoun = "pronuon" if "pronuon" in t.quirks else "pronoun"
    question = (
        f'In the previous sentence, does the {pronoun} "{ex["span2_text"]}" refer to '
        f'"{ex["span1_text"]}"? Yes or No?'
    )
    return lomo_answer(ex["text"], question), YES_NO


# --- mezo ------------------------------------------------------------------------------------


def mezo_boolq(ex: dict, t: Template) -> tuple[str, list[str]]:
    question = ex["question"] if ex["question"].endswith("?") else ex["question"] + "?"
    question = question[0].upper() + question[1:]
    return f"{ex['passage']} {question}\n", YES_NO


def mezo_cb(ex: dict, t: Template) -> tuple[str, list[str]]:
    text = f'Suppose {ex["premise"]} Can we infer that "{ex["hypothesis"]}"? Yes, No, or Maybe?\n'
    return text, ["Yes", "No", "Maybe"]


def mezo_copa_choice(choice: str) -> str:
    first, *rest = choice.split(" ")
    return " ".join([first if first == "I" else first.lower(), *rest])


def mezo_copa(ex: dict, t: Template) -> tuple[str, list[str]]:
    premise = ex["premise"].rstrip()
    premise = premise[:-1] if premise.endswith(".") else premise
    joiner = " so " if ex["question"] == "effect" else " because "
    return premise + joiner, [mezo_copa_choice(ex["choice1"]), mezo_copa_choice(ex["choice2"])]


def mezo_multirc(ex: dict, t: Template) -> tuple[str, list[str]]:
    text = (
        f"{ex['paragraph']}\nQuestion: {ex['question']}\n"
        f'I found this answer "{ex["answer"]}". Is that correct? Yes or No?\n'
    )
    return text, YES_NO


def mezo_record(ex: dict, t: Template) -> tuple[str, list[str]]:
    passage = ex["passage"].replace("@highlight\n", "- ")
    candidates = [" " + ex["query"].replace("@placeholder", e) for e in ex["entities"]]
    return f"{passage}\n-", candidates


def mezo_rte(ex: dict, t: Template) -> tuple[str, list[str]]:
    text = f'{ex["premise"]}\nDoes this mean that "{ex["hypothesis"]}" is true? Yes or No?\n'
    return text, ["Yes", "No"]


def mezo_wic(ex: dict, t: Template) -> tuple[str, list[str]]:
    text = (
        f'Does the word "{ex["word"]}" have the same meaning in these two sentences? Yes, No?\n'
        f"{ex['sentence1']}\n{ex['sentence2']}\n"
    )
    return text, YES_NO


def mezo_wsc(ex: dict, t: Template) -> tuple[str, list[str]]:
    text = (
        f"{ex['text']}\nIn the previous sentence, does the pronoun "
        f'"{ex["span2_text"].lower()}" refer to {ex["span1_text"]}? Yes or No?\n'
    )
    return text, YES_NO


# --- lm-eval ---------------------------------------------------------------------------------


def detokenize(text: str) -> str:
    """lm-eval's general_detokenize: undo the spaces of tokenised text around punctuation."""
    for before, after in ((" n't", "n't"), (" )", ")"), ("( ", "("), ('" ', '"'), (' "', '"')):
        text = text.replace(before, after)
    return re.sub(r" (['.,])", r"\1", text)


def lmeval_boolq(ex: dict, t: Template) -> tuple[str, list[str]]:
    return f"{ex['passage']}\nQuestion: {ex['question']}?\nAnswer:", [" no", " yes"]


def lmeval_cb(ex: dict, t: Template) -> tuple[str, list[str]]:
    text = f"{ex['premise']}\nQuestion: {ex['hypothesis']}. True, False, or Neither?\nAnswer:"
    return text, [" True", " False", " Neither"]


def lmeval_copa(ex: dict, t: Template) -> tuple[str, list[str]]:
    joiner = "therefore" if ex["question"] == "effect" else "because"
    text = ex["premise"].strip()[:-1] + f" {joiner}"  # drops the final period
    # lm-eval puts its " " target delimiter before choices that start with a space already
    delimiter = " " if t.name == "lm-eval" else ""
    return text, [f"{delimiter} {c[0].lower()}{c[1:]}" for c in (ex["choice1"], ex["choice2"])]


def lmeval_multirc(ex: dict, t: Template) -> tuple[str, list[str]]:
    text = f"{ex['paragraph']}\nQuestion: {ex['question']}\nAnswer:"
    # lm-eval lists "yes" first although label 1 (= index 1) means the answer is correct
    order = ("yes", "no") if t.name == "lm-eval" else ("no", "yes")
    return text, [f" {ex['answer']}\nIs the answer correct? {yn}" for yn in order]


def lmeval_record(ex: dict, t: Template) -> tuple[str, list[str]]:
    initial, *highlights = ex["passage"].strip().split("\n@highlight\n")
    text = initial + "\n\n" + "".join(f"  - {h}.\n" for h in highlights)
    # lm-eval: the " " target delimiter, then the choice "  - {query}"
    bullet = "   - " if t.name == "lm-eval" else "  - "
    return text, [f"{bullet}{ex['query']}".replace("@placeholder", e) for e in ex["entities"]]


def lmeval_rte(ex: dict, t: Template) -> tuple[str, list[str]]:
    text = f"{ex['premise']}\nQuestion: {ex['hypothesis']} True or False?\nAnswer:"
    return text, [" True", " False"]


def lmeval_wic(ex: dict, t: Template) -> tuple[str, list[str]]:
    word = ex["sentence1"][ex["start1"] : ex["end1"]]
    text = (
        f"Sentence 1: {ex['sentence1']}\nSentence 2: {ex['sentence2']}\n"
        f"Question: Is the word '{word}' used in the same way in the two sentences above?\n"
        "Answer:"
    )
    return text, [" no", " yes"]


def wsc_fixed(ex: dict) -> dict:
    """A plain WSC row as the Hugging Face `super_glue` config `wsc.fixed` holds it (the
    config lm-eval reads): a span text that is not a substring of the text is repaired by
    matching the case of its first letter to the word at its index, dropping trailing periods
    and turning newlines into spaces. Two spans with intervening words cannot be repaired and
    stay; a span containing "theyscold" gets span2_index 10 (the dataset script's text fix for
    it has no effect, so the text stays). On the official validation split this lower-cases
    8 span1 texts ("The table" -> "the table")."""
    fixed = dict(ex)
    for span in ("span1", "span2"):
        text, index = ex[f"{span}_text"], ex[f"{span}_index"]
        if text in ex["text"] or text in ("Kamenev and Zinoviev", "Kamenev, Zinoviev, and Stalin"):
            continue
        if "theyscold" in text:
            fixed["span2_index"] = 10
        first = ex["text"].split()[index]
        text = (text[0].lower() if first[0].islower() else text[0].upper()) + text[1:]
        fixed[f"{span}_text"] = text.rstrip(".").replace("\n", " ")
    return fixed


def lmeval_wsc(ex: dict, t: Template) -> tuple[str, list[str]]:
    """lm-eval reads `wsc.fixed`; our data is the plain WSC (the official jsonl, as the
    paper used), so the row is first repaired as `wsc.fixed` does (`wsc_fixed`), which makes
    the rendering identical to lm-eval's on the same example. span2_index counts
    whitespace-separated words; the pronoun is marked with asterisks."""
    ex = wsc_fixed(ex)
    pronoun, noun = ex["span2_text"], ex["span1_text"]
    before = " ".join(ex["text"].split()[: ex["span2_index"]])
    after = ex["text"][len(before) + len(pronoun) + 1 :]
    passage = detokenize(before + f" *{pronoun}*" + after)
    text = (
        f"Passage: {passage}\n"
        f'Question: In the passage above, does the pronoun "*{pronoun}*" refer to "*{noun}*"?\n'
        "Answer:"
    )
    return text, [" no", " yes"]


TemplateFn = Callable[[dict, Template], tuple[str, list[str]]]


# --- the gold option ---------------------------------------------------------------------------


def label_gold(ex: dict) -> int:
    return ex["label"]


def first_answer_gold(ex: dict) -> int:
    """ReCoRD trains on the first gold entity; its metrics use all of them."""
    return ex["entities"].index(ex["answers"][0])
