"""Metrics on hand-made predictions, against values worked out by hand."""

import pytest

from tasks.superglue import get_task


def labelled(labels):
    return [{"idx": i, "label": label} for i, label in enumerate(labels)]


def test_accuracy():
    assert get_task("rte").metrics(labelled([0, 1, 1, 0]), [0, 1, 0, 0]) == {"accuracy": 0.75}


def test_cb_macro_f1():
    # class 0: P 1/2 R 1/2 F1 1/2; class 1: P 2/3 R 1 F1 4/5; class 2: P 1 R 1/2 F1 2/3
    metrics = get_task("cb").metrics(labelled([0, 0, 1, 1, 2, 2]), [0, 1, 1, 1, 0, 2])
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["f1_macro"] == pytest.approx(59 / 90)


def test_multirc_f1a_and_exact_match():
    def option(paragraph, question, answer, label):
        idx = {"paragraph": paragraph, "question": question, "answer": answer}
        return {"idx": idx, "label": label}

    examples = [
        option(0, 0, 0, 1),
        option(0, 0, 1, 0),
        option(0, 0, 2, 1),  # missed: question 0 not exact
        option(0, 1, 3, 0),
        option(0, 1, 4, 1),  # question 1 all right
        option(1, 2, 5, 0),  # false positive: question 2 not exact
    ]
    metrics = get_task("multirc").metrics(examples, [1, 0, 0, 0, 1, 1])
    # TP 2, FP 1, FN 1 -> P = R = F1a = 2/3; exact questions 1 of 3; options right 4 of 6.
    assert metrics == pytest.approx({"accuracy": 4 / 6, "f1a": 2 / 3, "em": 1 / 3})


def test_record_max_over_gold_em_and_token_f1():
    examples = [
        {
            "entities": ["Barack Obama", "Obama", "the United States"],
            "answers": ["Barack Obama", "Obama"],
        },
        {"entities": ["New York City", "York", "Boston"], "answers": ["New York City"]},
        {"entities": ["The Beatles", "Beatles!", "Stones"], "answers": ["The Beatles"]},
    ]
    metrics = get_task("record").metrics(examples, [1, 1, 1])
    # 1: "Obama" matches the second gold exactly. 2: "york" vs "new york city": EM 0,
    # F1 = 2 * 1 * 1/3 / (1 + 1/3) = 1/2. 3: "Beatles!" normalises to "beatles", like
    # "The Beatles" (article and punctuation dropped): EM 1, but not the same string.
    assert metrics == pytest.approx({"accuracy": 1 / 3, "em": 2 / 3, "f1": 5 / 6})


def test_one_prediction_per_example():
    with pytest.raises(ValueError, match="need one prediction per example, got 1 for 2"):
        get_task("copa").metrics(labelled([0, 1]), [0])
