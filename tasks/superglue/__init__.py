"""SuperGLUE tasks: data (data.py), sampling protocols (protocols.py), prompt templates
(prompts.py) and metrics (metrics.py). Adding a task means adding it to each of those tables
and to `TASKS` below; nothing outside this folder changes.
"""

from dataclasses import dataclass
from pathlib import Path

from tasks.superglue.data import DataError, load_split
from tasks.superglue.metrics import compute_metrics
from tasks.superglue.prompts import Prompt, Template, get_template, render
from tasks.superglue.protocols import PROTOCOLS, Prepared, prepare


@dataclass(frozen=True)
class Task:
    name: str
    # The long free text cut (from its end) when a prompt exceeds max_length; None = never cut.
    context_field: str | None

    def load(
        self, split: str, source: str = "local", data_dir: str | Path | None = None
    ) -> list[dict]:
        return load_split(self.name, split, source, data_dir)

    def render(self, example: dict, template: Template) -> Prompt:
        return render(self.name, example, template)

    def metrics(self, examples: list[dict], preds: list[int]) -> dict[str, float]:
        return compute_metrics(self.name, examples, preds)


TASKS = {
    task.name: task
    for task in (
        Task("boolq", "passage"),
        Task("cb", "premise"),
        Task("copa", "premise"),
        Task("multirc", "paragraph"),
        Task("record", "passage"),
        Task("rte", "premise"),
        Task("wic", None),  # two short sentences, both needed
        Task("wsc", "text"),
    )
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}: expected one of {', '.join(TASKS)}")
    return TASKS[name]


__all__ = [
    "PROTOCOLS",
    "TASKS",
    "DataError",
    "Prepared",
    "Prompt",
    "Task",
    "Template",
    "get_task",
    "get_template",
    "prepare",
]
