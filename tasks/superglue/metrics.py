"""Task metrics from predicted option indices (label ids, or entity indices for ReCoRD). Each
function takes the examples and one prediction per example and returns the metrics by name; a
task's declaration (tasks.py) names its function and which of its metrics is the primary one.

- every task: accuracy (MultiRC: per answer option, as in the paper's Table 3)
- CB: macro-F1 over the three classes (SuperGLUE's CB metric)
- MultiRC: F1a (binary F1 over all answer options) and EM (share of questions whose options
  are all predicted correctly), the official SuperGLUE MultiRC metrics
- ReCoRD: max-over-gold exact match and token F1 after SQuAD answer normalisation
"""

import re
import string
from collections import Counter, defaultdict


def sklearn_metrics():
    """scikit-learn's metrics, imported on first use: the workflow imports this package when it
    parses, and must stay light."""
    import sklearn.metrics

    return sklearn.metrics


def gold_nll_per_token(row: dict, reduction: str) -> float:
    """One scored example's gold-answer negative log-likelihood per answer token, from its
    prediction row (`scores`: summed or mean log-probabilities per option, `n_tokens`)."""
    score = row["scores"][row["gold"]]
    return -score / row["n_tokens"][row["gold"]] if reduction == "sum" else -score


def golds(examples: list[dict]) -> list[int]:
    return [ex["label"] for ex in examples]


def accuracy(examples: list[dict], preds: list[int]) -> dict[str, float]:
    return {"accuracy": float(sklearn_metrics().accuracy_score(golds(examples), preds))}


def cb_metrics(examples: list[dict], preds: list[int]) -> dict[str, float]:
    f1 = sklearn_metrics().f1_score(
        golds(examples), preds, labels=[0, 1, 2], average="macro", zero_division=0
    )
    return {**accuracy(examples, preds), "f1_macro": float(f1)}


def multirc_metrics(examples: list[dict], preds: list[int]) -> dict[str, float]:
    f1a = sklearn_metrics().f1_score(
        golds(examples), preds, pos_label=1, average="binary", zero_division=0
    )
    all_right: dict[tuple, bool] = defaultdict(lambda: True)
    for ex, pred in zip(examples, preds, strict=True):
        question = (ex["idx"]["paragraph"], ex["idx"]["question"])
        all_right[question] &= pred == ex["label"]
    em = sum(all_right.values()) / len(all_right)
    return {**accuracy(examples, preds), "f1a": float(f1a), "em": em}


def normalize_answer(text: str) -> str:
    """SQuAD / official ReCoRD normalisation: lower case, no punctuation, articles, extra space."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, gold: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def record_metrics(examples: list[dict], preds: list[int]) -> dict[str, float]:
    em, f1, hits = [], [], []
    for ex, pred in zip(examples, preds, strict=True):
        entity, answers = ex["entities"][pred], ex["answers"]
        em.append(max(float(normalize_answer(entity) == normalize_answer(a)) for a in answers))
        f1.append(max(token_f1(entity, a) for a in answers))
        hits.append(float(entity in answers))
    n = len(examples)
    return {"accuracy": sum(hits) / n, "em": sum(em) / n, "f1": sum(f1) / n}
