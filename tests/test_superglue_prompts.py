"""Rendered prompts for one real example per task and template, against hand-written strings."""

import functools
import importlib
import json
import sys
import types
import warnings
from pathlib import Path

import pytest
from examples import EXAMPLES, real_example
from paths import DATA_DIR

from tasks.superglue import get_task, get_template, load_split
from tasks.superglue.prompts import wsc_fixed

# (task, split, position in the loaded split) of the real examples used below.

BOOLQ_PASSAGE = (
    "Northwest Florida State College -- The school voted to change its name to Okaloosa-Walton "
    "Community College in 1988, and gained four-year status in 2003, thus changing its name to "
    "Okaloosa-Walton College."
)
MULTIRC_PARAGRAPH = (
    "Susan wanted to have a birthday party. She called all of her friends. She has five friends. "
    "Her mom said that Susan can invite them all to the party. Her first friend could not go to "
    "the party because she was sick. Her second friend was going out of town. Her third friend "
    "was not so sure if her parents would let her. The fourth friend said maybe. The fifth friend "
    "could go to the party for sure. Susan was a little sad. On the day of the party, all five "
    "friends showed up. Each friend had a present for Susan. Susan was happy and sent each friend "
    "a thank you card the next week. "
)
RECORD_BODY = (
    "By Leon Watson PUBLISHED: 12:24 EST, 15 October 2012 | UPDATED: 01:47 EST, 16 October 2012 "
    "A thug who stabbed his friend 11 times and left him for dead after a row over a game of "
    "darts has been jailed for eight years. Peter Roberts, 46, from Northampton, launched a "
    "'frenzied and determined' attack on Shane Reeves, 22, after they fell out on July 5 this "
    "year. Roberts plunged a kitchen knife into his friend's chest, abdomen, shoulder and arm "
    "before dumping him on a landing. Peter Roberts, from Northampton, stabbed his friend 11 "
    "times and left him for dead after a row over a game of darts. He has been jailed for eight "
    "years"
)
HIGHLIGHT_1 = "Peter Roberts, from Northampton, jailed for attack on Shane Reeves"
HIGHLIGHT_2 = "The pair, aged 46 and 22, were friends but fell out on July 5 this year"
RECORD_QUERY = "After undergoing surgery, Mr {} spent a month recovering from his injuries."
ENTITIES = ["Leon Watson", "Northampton", "Peter Roberts", "Roberts", "Shane Reeves"]
YES_NO = ["No", "Yes"]

GOLDEN = {
    "lomo": {
        "boolq": (
            BOOLQ_PASSAGE + " is northwest florida state college a 4 year college\nAnswer: ",
            YES_NO,
        ),
        "cb": (
            "Suppose A: Your turn. B: Okay. Uh, I don't think they should abolish it. Can we "
            'infer that "they should abolish it"? Yes, No, or Maybe?\nAnswer: ',
            ["Yes", "No", "Maybe"],
        ),
        "copa": ("I coughed. because ", ["I inhaled smoke.", "I lowered my voice."]),
        "multirc": (
            MULTIRC_PARAGRAPH + "\nQuestion: How many people did Susan call?\n"
            'I found this answer "5". Is that correct? Yes or No?\nAnswer: ',
            YES_NO,
        ),
        "record": (
            f"{RECORD_BODY}\n- {HIGHLIGHT_1}\n- {HIGHLIGHT_2}\n"
            + RECORD_QUERY.format("@placeholder")
            + '\nQuestion: What is the "@placeholder"?\nAnswer: ',
            ENTITIES,
        ),
        "rte": (
            "The girl was found in Drummondville.\n"
            'Does this mean that "Drummondville contains the girl." is true? Yes or No?\nAnswer: ',
            ["Yes", "No"],
        ),
        "wic": (
            'Does the word "curd" have the same meaning in these two sentences? Yes, No?\n'
            "Bean curd.\nLemon curd.\nAnswer: ",
            YES_NO,
        ),
        "wsc": (
            "Jane gave Joan candy because she was hungry.\n"
            'In the previous sentence, does the pronoun "she" refer to "Jane"? Yes or No?\n'
            "Answer: ",
            YES_NO,
        ),
    },
    "mezo": {
        "boolq": (
            BOOLQ_PASSAGE + " Is northwest florida state college a 4 year college?\n",
            YES_NO,
        ),
        "cb": (
            "Suppose A: Your turn. B: Okay. Uh, I don't think they should abolish it. Can we "
            'infer that "they should abolish it"? Yes, No, or Maybe?\n',
            ["Yes", "No", "Maybe"],
        ),
        "copa": ("I coughed because ", ["I inhaled smoke.", "I lowered my voice."]),
        "multirc": (
            MULTIRC_PARAGRAPH + "\nQuestion: How many people did Susan call?\n"
            'I found this answer "5". Is that correct? Yes or No?\n',
            YES_NO,
        ),
        "record": (
            f"{RECORD_BODY}\n- {HIGHLIGHT_1}\n- {HIGHLIGHT_2}\n-",
            [" " + RECORD_QUERY.format(entity) for entity in ENTITIES],
        ),
        "rte": (
            "The girl was found in Drummondville.\n"
            'Does this mean that "Drummondville contains the girl." is true? Yes or No?\n',
            ["Yes", "No"],
        ),
        "wic": (
            'Does the word "curd" have the same meaning in these two sentences? Yes, No?\n'
            "Bean curd.\nLemon curd.\n",
            YES_NO,
        ),
        "wsc": (
            "Jane gave Joan candy because she was hungry.\n"
            'In the previous sentence, does the pronoun "she" refer to Jane? Yes or No?\n',
            YES_NO,
        ),
    },
    "lm-eval-clean": {
        "boolq": (
            BOOLQ_PASSAGE
            + "\nQuestion: is northwest florida state college a 4 year college?\nAnswer:",
            [" no", " yes"],
        ),
        "cb": (
            "A: Your turn. B: Okay. Uh, I don't think they should abolish it.\n"
            "Question: they should abolish it. True, False, or Neither?\nAnswer:",
            [" True", " False", " Neither"],
        ),
        "copa": ("I coughed because", [" i inhaled smoke.", " i lowered my voice."]),
        "multirc": (
            MULTIRC_PARAGRAPH + "\nQuestion: How many people did Susan call?\nAnswer:",
            [" 5\nIs the answer correct? no", " 5\nIs the answer correct? yes"],
        ),
        "record": (
            f"{RECORD_BODY}\n\n  - {HIGHLIGHT_1}.\n  - {HIGHLIGHT_2}.\n",
            ["  - " + RECORD_QUERY.format(entity) for entity in ENTITIES],
        ),
        "rte": (
            "The girl was found in Drummondville.\n"
            "Question: Drummondville contains the girl. True or False?\nAnswer:",
            [" True", " False"],
        ),
        "wic": (
            "Sentence 1: Bean curd.\nSentence 2: Lemon curd.\n"
            "Question: Is the word 'curd' used in the same way in the two sentences above?\n"
            "Answer:",
            [" no", " yes"],
        ),
        "wsc": (
            "Passage: Jane gave Joan candy because *she* was hungry.\n"
            'Question: In the passage above, does the pronoun "*she*" refer to "*Jane*"?\n'
            "Answer:",
            [" no", " yes"],
        ),
    },
}
# lm-eval itself: its " " target delimiter before COPA's and ReCoRD's choices, which start with
# spaces already, and MultiRC's (yes, no) choice order.
GOLDEN["lm-eval"] = {
    **GOLDEN["lm-eval-clean"],
    "copa": ("I coughed because", ["  i inhaled smoke.", "  i lowered my voice."]),
    "multirc": (
        GOLDEN["lm-eval-clean"]["multirc"][0],
        [" 5\nIs the answer correct? yes", " 5\nIs the answer correct? no"],
    ),
    "record": (
        GOLDEN["lm-eval-clean"]["record"][0],
        ["   - " + RECORD_QUERY.format(entity) for entity in ENTITIES],
    ),
}
GOLD = {"boolq": 1, "cb": 1, "copa": 0, "multirc": 1, "record": 4, "rte": 1, "wic": 1, "wsc": 0}


@pytest.mark.real_data
@pytest.mark.parametrize("template", list(GOLDEN))
@pytest.mark.parametrize("task", list(EXAMPLES))
def test_rendered_prompt_equals_golden(task, template):
    prompt = get_task(task).render(real_example(task), get_template(template))
    assert (prompt.text, prompt.candidates) == GOLDEN[template][task]
    assert prompt.gold == GOLD[task]


@pytest.mark.real_data
def test_wsc_pronuon_quirk():
    prompt = get_task("wsc").render(real_example("wsc"), get_template("lomo+pronuon"))
    assert 'does the pronuon "she" refer to "Jane"?' in prompt.text


@pytest.mark.real_data
def test_copa_choice_casing_per_template():
    # Real COPA train row: "The chandelier shattered on the floor." (cause).
    example = load_split("copa", "train", "local", DATA_DIR)[0]
    lomo = get_task("copa").render(example, get_template("lomo"))
    mezo = get_task("copa").render(example, get_template("mezo"))
    lm_eval = get_task("copa").render(example, get_template("lm-eval"))
    assert lomo.text == "The chandelier shattered on the floor. because "
    assert lomo.candidates[0] == "The chandelier dropped from the ceiling."
    assert mezo.text == "The chandelier shattered on the floor because "
    assert mezo.candidates[0] == "the chandelier dropped from the ceiling."
    assert lm_eval.text == "The chandelier shattered on the floor because"
    assert lm_eval.candidates[0] == "  the chandelier dropped from the ceiling."


@pytest.mark.real_data
def test_lm_eval_wsc_detokenizes_the_passage():
    # Real WSC val row 0 has tokenised spacing: "Bernard , who ... away from him ."
    prompt = get_task("wsc").render(real_example("wsc", 0), get_template("lm-eval"))
    assert prompt.text.startswith("Passage: Bernard, who had not told the government official")
    assert "could take his claim away from *him*.\nQuestion:" in prompt.text


def test_template_ids_and_bad_template_names():
    assert get_template("lomo+score-eos+pronuon").id == "lomo+pronuon+score-eos"
    assert get_template("lm-eval").id == "lm-eval"
    with pytest.raises(ValueError, match="unknown template 'gpt3': expected one of lomo, mezo"):
        get_template("gpt3")
    with pytest.raises(ValueError, match=r"unknown quirk\(s\) \['typo'\]"):
        get_template("lomo+typo")
    with pytest.raises(ValueError, match="use them with 'lomo'"):
        get_template("mezo+pronuon")


# --- lm-evaluation-harness 0.4.x, request by request -----------------------------------------

# The val rows whose span1 text `wsc.fixed` (the WSC config lm-eval reads) writes differently
# from the plain WSC: the word at span1_index is lower case ("... on the table"), the plain
# span is capitalised. Read off the data by hand, independently of `wsc_fixed`.
WSC_FIXED_SPAN1 = {
    5: "the table",
    23: "the table",
    28: "the lake",
    29: "the oatmeal cookies",
    51: "the woman",
    81: "the oatmeal cookies",
    87: "the lake",
    89: "the chocolate chip cookies",
}
# Local splits with a label (BoolQ's and ReCoRD's validation splits are held back here).
LMEVAL_SPLITS = {
    "boolq": "train",
    "cb": "val",
    "copa": "val",
    "multirc": "val",
    "record": "train",
    "rte": "val",
    "wic": "val",
    "wsc": "val",
}


@functools.cache
def task_manager():
    """lm-eval's index of its task YAMLs (built once: it reads them all)."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


def lmeval_requests(task: str, rows: list[dict], tmp_path) -> list[tuple[str, list[str], int]]:
    """(context, continuations, gold index) per row, built by lm-eval itself: a task YAML that
    includes lm-eval's own SuperGLUE task YAML (doc_to_text, doc_to_choice, doc_to_target,
    target_delimiter, process_docs) and only points its dataset at these rows in a local json
    file instead of the hub, loaded by lm-eval's task manager."""
    import lm_eval
    from lm_eval.tasks import get_task_dict

    data = tmp_path / f"{task}.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    included = Path(lm_eval.__file__).parent / "tasks" / "super_glue" / task / "default.yaml"
    config = {
        "include": str(included),
        "task": f"{task}_local_rows",
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {"validation": str(data)}, "cache_dir": str(tmp_path)},
        "training_split": None,
    }
    (tmp_path / "task.yaml").write_text(json.dumps(config))  # JSON is YAML
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # get_task_dict: all of 0.4.x has it
        (lm_task,) = get_task_dict([str(tmp_path / "task.yaml")], task_manager()).values()
    requests = []
    for doc_id, doc in enumerate(lm_task.validation_docs()):
        context = lm_task.fewshot_context(doc, 0)
        instances = lm_task.construct_requests(doc=doc, ctx=context, metadata=(task, doc_id, 1))
        assert {i.arguments[0] for i in instances} == {context}
        target = lm_task.doc_to_target(doc)
        choices = lm_task.doc_to_choice(doc)
        gold = choices.index(target) if isinstance(target, str) else target
        requests.append((context, [i.arguments[1] for i in instances], gold))
    return requests


@pytest.mark.real_data
@pytest.mark.parametrize("task", list(LMEVAL_SPLITS))
def test_lm_eval_template_equals_lm_evaluation_harness_requests(task, tmp_path, monkeypatch):
    pytest.importorskip(
        "lm_eval", reason="lm-evaluation-harness is not installed (pip install lm_eval==0.4.13)"
    )
    if task == "record" and importlib.util.find_spec("transformers") is not None:
        # lm-eval's ReCoRD utils import transformers' SQuAD metrics (gone in transformers 5)
        # for scoring only; building the requests does not use them.
        for name in ("transformers.data.metrics", "transformers.data.metrics.squad_metrics"):
            try:
                importlib.import_module(name)
            except ImportError:
                monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    rows = load_split(task, LMEVAL_SPLITS[task], "local", DATA_DIR)
    harness_rows = rows
    if task == "wsc":  # lm-eval reads wsc.fixed; our template repairs the plain rows itself
        harness_rows = [
            {**r, "span1_text": WSC_FIXED_SPAN1.get(r["idx"], r["span1_text"])} for r in rows
        ]
    expected = lmeval_requests(task, harness_rows, tmp_path)
    template = get_template("lm-eval")
    ours = [get_task(task).render(row, template) for row in rows]
    assert len(ours) == len(expected)
    for row, prompt, (context, continuations, gold) in zip(rows, ours, expected, strict=True):
        assert (prompt.text, prompt.candidates, prompt.gold) == (context, continuations, gold), row


@pytest.mark.real_data
def test_wsc_fixed_repairs_exactly_the_spans_lm_eval_reads_differently():
    rows = load_split("wsc", "val", "local", DATA_DIR)
    changed = {r["idx"]: fixed["span1_text"] for r in rows if (fixed := wsc_fixed(r)) != r}
    assert changed == WSC_FIXED_SPAN1


@pytest.mark.real_data
def test_lm_eval_clean_differs_from_lm_eval_only_in_copa_record_and_multirc_order():
    copa = real_example("copa")
    assert (
        get_task("copa").render(copa, get_template("lm-eval")).candidates[0] == "  i inhaled smoke."
    )
    multirc = get_task("multirc").render(real_example("multirc"), get_template("lm-eval"))
    assert multirc.candidates[multirc.gold].endswith("correct? no")  # lm-eval's reversed order
    clean = get_task("multirc").render(real_example("multirc"), get_template("lm-eval-clean"))
    assert clean.candidates[clean.gold].endswith("correct? yes")
    record = get_task("record").render(real_example("record"), get_template("lm-eval"))
    assert record.candidates[0].startswith("   - After")
    for task in ("boolq", "cb", "rte", "wic", "wsc"):
        example = real_example(task)
        same = [
            get_task(task).render(example, get_template(t)) for t in ("lm-eval", "lm-eval-clean")
        ]
        assert same[0] == same[1], task
