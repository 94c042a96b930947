"""The SuperGLUE tasks, each declared once (a `Task`, task.py): where its data is, what a record
holds, how it is prompted and scored. Everything else (loading, protocols, evaluation, the
workflow's config check, the tables) reads these declarations; adding a task is adding one
`Task` to `TASKS`.
"""

from pathlib import Path

from tasks.superglue import data, metrics, prompts
from tasks.superglue.prompts import QUIRKS, Template
from tasks.superglue.task import Task

# `lm-eval` and `lm-eval-clean` share their functions, which tell the two apart by the name.
TASKS = {
    task.name: task
    for task in (
        Task(
            name="boolq",
            folder="BoolQ",
            labels=(False, True),
            fields={"question": str, "passage": str},
            context_field="passage",
            metrics_fn=metrics.accuracy,
            primary_metric="accuracy",
            templates={
                "lomo": prompts.lomo_boolq,
                "mezo": prompts.mezo_boolq,
                "lm-eval": prompts.lmeval_boolq,
                "lm-eval-clean": prompts.lmeval_boolq,
            },
        ),
        Task(
            name="cb",
            folder="CB",
            labels=("entailment", "contradiction", "neutral"),
            fields={"premise": str, "hypothesis": str},
            context_field="premise",
            metrics_fn=metrics.cb_metrics,
            primary_metric="accuracy",
            templates={
                "lomo": prompts.lomo_cb,
                "mezo": prompts.mezo_cb,
                "lm-eval": prompts.lmeval_cb,
                "lm-eval-clean": prompts.lmeval_cb,
            },
        ),
        Task(
            name="copa",
            folder="COPA",
            labels=(0, 1),
            fields={"premise": str, "choice1": str, "choice2": str, "question": str},
            context_field="premise",
            metrics_fn=metrics.accuracy,
            primary_metric="accuracy",
            templates={
                "lomo": prompts.lomo_copa,
                "mezo": prompts.mezo_copa,
                "lm-eval": prompts.lmeval_copa,
                "lm-eval-clean": prompts.lmeval_copa,
            },
        ),
        Task(
            name="multirc",
            folder="MultiRC",
            labels=(0, 1),
            fields={"paragraph": str, "question": str, "answer": str},
            context_field="paragraph",
            metrics_fn=metrics.multirc_metrics,
            primary_metric="accuracy",  # per answer option, as in the paper's Table 3
            templates={
                "lomo": prompts.lomo_multirc,
                "mezo": prompts.mezo_multirc,
                "lm-eval": prompts.lmeval_multirc,
                "lm-eval-clean": prompts.lmeval_multirc,
            },
            idx_keys=("paragraph", "question", "answer"),
            from_jsonl=data.multirc_rows,  # one record per answer option
        ),
        Task(
            name="record",
            folder="ReCoRD",
            labels=None,  # the answer is one of the passage's entities
            fields={"passage": str, "query": str, "entities": list, "answers": list},
            context_field="passage",
            metrics_fn=metrics.record_metrics,
            primary_metric="f1",
            templates={
                "lomo": prompts.lomo_record,
                "mezo": prompts.mezo_record,
                "lm-eval": prompts.lmeval_record,
                "lm-eval-clean": prompts.lmeval_record,
            },
            idx_keys=("passage", "query"),
            from_jsonl=data.record_rows,  # one record per query
            from_hub=data.record_hub_record,
            check=data.check_record,  # the answers are among the entities
            gold=prompts.first_answer_gold,
        ),
        Task(
            name="rte",
            folder="RTE",
            labels=("entailment", "not_entailment"),
            fields={"premise": str, "hypothesis": str},
            context_field="premise",
            metrics_fn=metrics.accuracy,
            primary_metric="accuracy",
            templates={
                "lomo": prompts.lomo_rte,
                "mezo": prompts.mezo_rte,
                "lm-eval": prompts.lmeval_rte,
                "lm-eval-clean": prompts.lmeval_rte,
            },
        ),
        Task(
            name="wic",
            folder="WiC",
            labels=(False, True),
            fields={
                "word": str,
                "sentence1": str,
                "sentence2": str,
                "start1": int,
                "end1": int,
                "start2": int,
                "end2": int,
            },
            context_field=None,  # two short sentences, both needed
            metrics_fn=metrics.accuracy,
            primary_metric="accuracy",
            templates={
                "lomo": prompts.lomo_wic,
                "mezo": prompts.mezo_wic,
                "lm-eval": prompts.lmeval_wic,
                "lm-eval-clean": prompts.lmeval_wic,
            },
        ),
        Task(
            name="wsc",
            folder="WSC",
            labels=(False, True),
            fields={
                "text": str,
                "span1_index": int,
                "span2_index": int,
                "span1_text": str,
                "span2_text": str,
            },
            context_field="text",
            metrics_fn=metrics.accuracy,
            primary_metric="accuracy",
            templates={
                "lomo": prompts.lomo_wsc,
                "mezo": prompts.mezo_wsc,
                "lm-eval": prompts.lmeval_wsc,
                "lm-eval-clean": prompts.lmeval_wsc,
            },
            from_jsonl=data.wsc_rows,  # the span fields are in the row's `target`
        ),
    )
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}: expected one of {', '.join(TASKS)}")
    return TASKS[name]


def load_split(
    task: str, split: str, source: str = "local", data_dir: str | Path | None = None
) -> list[dict]:
    """Load one split ("train" or "val") of a task from `source` ("local" or "hub")."""
    return data.load(get_task(task), split, source, data_dir)


def get_template(spec: str) -> Template:
    """Parse a template spec such as "mezo" or "lomo+pronuon+last-prompt-token"."""
    name, *quirks = spec.split("+")
    names = list(dict.fromkeys(known for task in TASKS.values() for known in task.templates))
    if name not in names:
        raise ValueError(f"unknown template {name!r}: expected one of {', '.join(names)}")
    unknown = sorted(set(quirks) - set(QUIRKS))
    if unknown:
        raise ValueError(f"unknown quirk(s) {unknown}: expected some of {', '.join(QUIRKS)}")
    if quirks and name != "lomo":
        raise ValueError(f"quirks {quirks} reproduce the official LOMO code; use them with 'lomo'")
    return Template(name, frozenset(quirks))
