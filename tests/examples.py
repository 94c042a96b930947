"""Real SuperGLUE examples the prompt and evaluation tests share: (split, position) per task,
chosen to cover each task's quirks."""

from paths import DATA_DIR

from tasks.superglue import get_task

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


def real_example(task: str, position: int | None = None) -> dict:
    split, default = EXAMPLES[task]
    return get_task(task).load(split, "local", DATA_DIR)[default if position is None else position]
