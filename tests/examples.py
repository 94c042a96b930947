"""Real SuperGLUE examples the prompt and evaluation tests share: (split, position) per task,
chosen to cover each task's quirks. The tests that read them are marked `real_data`."""

from paths import REAL_DATA_DIR

from tasks.superglue import load_split

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
    rows = load_split(task, split, "local", REAL_DATA_DIR)
    return rows[default if position is None else position]
