"""Rendered prompts for one real example per task and template, against hand-written strings."""

import pytest
from superglue_paths import DATA_DIR

from tasks.superglue import get_task, get_template

# (task, split, position in the loaded split) of the real examples used below.
EXAMPLES = {
    "boolq": ("train", 11),
    "cb": ("val", 14),
    "copa": ("val", 32),
    "multirc": ("val", 2147),
    "record": ("train", 12),
    "rte": ("val", 208),
    "wic": ("val", 239),
    "wsc": ("val", 10),
}

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
    "lm-eval": {
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
GOLD = {"boolq": 1, "cb": 1, "copa": 0, "multirc": 1, "record": 4, "rte": 1, "wic": 1, "wsc": 0}


def real_example(task: str, position: int | None = None) -> dict:
    split, default = EXAMPLES[task]
    return get_task(task).load(split, "local", DATA_DIR)[default if position is None else position]


@pytest.mark.parametrize("template", list(GOLDEN))
@pytest.mark.parametrize("task", list(EXAMPLES))
def test_rendered_prompt_equals_golden(task, template):
    prompt = get_task(task).render(real_example(task), get_template(template))
    assert (prompt.text, prompt.candidates) == GOLDEN[template][task]
    assert prompt.gold == GOLD[task]


def test_wsc_pronuon_quirk():
    prompt = get_task("wsc").render(real_example("wsc"), get_template("lomo+pronuon"))
    assert 'does the pronuon "she" refer to "Jane"?' in prompt.text


def test_copa_choice_casing_per_template():
    # Real COPA train row: "The chandelier shattered on the floor." (cause).
    example = get_task("copa").load("train", "local", DATA_DIR)[0]
    lomo = get_task("copa").render(example, get_template("lomo"))
    mezo = get_task("copa").render(example, get_template("mezo"))
    lm_eval = get_task("copa").render(example, get_template("lm-eval"))
    assert lomo.text == "The chandelier shattered on the floor. because "
    assert lomo.candidates[0] == "The chandelier dropped from the ceiling."
    assert mezo.text == "The chandelier shattered on the floor because "
    assert mezo.candidates[0] == "the chandelier dropped from the ceiling."
    assert lm_eval.text == "The chandelier shattered on the floor because"
    assert lm_eval.candidates[0] == " the chandelier dropped from the ceiling."


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
