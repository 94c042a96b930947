"""What a SuperGLUE task declares (`Task`): where its data is, what a record holds, how it is
prompted and scored. The declarations themselves are the registry, `TASKS` in tasks.py; data.py
reads a declaration's rows. This module imports neither, so the two do not import each other.
"""

from collections.abc import Callable
from dataclasses import dataclass

from tasks.superglue import prompts
from tasks.superglue.prompts import Prompt, Template, TemplateFn

Rows = Callable[["Task", dict, str], list[dict]]  # (task, official jsonl row, where) -> records
HubRecord = Callable[["Task", dict, str], dict]  # (task, hub row, where) -> record
Metrics = Callable[[list[dict], list[int]], dict[str, float]]  # (examples, predictions)

TYPE_NAMES = {str: "a string", int: "an integer", list: "a list of strings"}  # field types


@dataclass(frozen=True)
class Task:
    name: str  # also the hub config name (aps/super_glue)
    folder: str  # the official folder (RTE/); found in any letter case
    # Label names as the official jsonl files write them, in the hub's ClassLabel order (the
    # index is the label id). None: no label field (ReCoRD picks one of its entities).
    labels: tuple | None
    fields: dict[str, type]  # record fields besides idx and label: str, int or list (of str)
    # The long free text cut (from its end) when a prompt exceeds max_length; None = never cut.
    context_field: str | None
    metrics_fn: Metrics
    primary_metric: str  # the metric that selects epochs and grid points and fills the tables
    templates: dict[str, TemplateFn]  # template name -> its prompt function (prompts.py)
    idx_keys: tuple[str, ...] = ()  # keys of a struct idx; () = an integer idx
    # How rows that are not the usual ones become records (functions of data.py); None: the
    # usual row (data.labelled_rows, data.labelled_hub_record).
    from_jsonl: Rows | None = None  # official jsonl row -> records
    from_hub: HubRecord | None = None  # hub row -> record
    check: Callable[[dict, str], dict] | None = None  # more checks of a typed record
    gold: Callable[[dict], int] = prompts.label_gold  # index of the gold candidate

    def __post_init__(self) -> None:
        odd = {field: kind for field, kind in self.fields.items() if kind not in TYPE_NAMES}
        if odd:
            raise TypeError(f"task {self.name}: field types {odd}: expected str, int or list")
        if self.labels is None and self.gold is prompts.label_gold:
            raise TypeError(f"task {self.name} has no labels: declare its `gold` option")

    def render(self, example: dict, template: Template) -> Prompt:
        """Prompt text, one candidate per option (label id / ReCoRD entity), and the gold index."""
        if template.name not in self.templates:
            raise ValueError(
                f"{self.name} has no {template.name!r} template: "
                f"expected one of {', '.join(self.templates)}"
            )
        text, candidates = self.templates[template.name](example, template)
        return Prompt(text, candidates, self.gold(example))

    def metrics(self, examples: list[dict], preds: list[int]) -> dict[str, float]:
        if len(examples) != len(preds) or not examples:
            raise ValueError(
                f"need one prediction per example, got {len(preds)} for {len(examples)}"
            )
        return self.metrics_fn(examples, preds)
