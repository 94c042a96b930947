"""SuperGLUE tasks: each task declared once in tasks.py (a `Task` of task.py: folder, labels,
fields, metrics, primary metric, prompt functions), read by data loading (data.py), sampling
protocols (protocols.py), prompt rendering (prompts.py) and metrics (metrics.py). Adding a task
means adding one `Task` to `TASKS` in tasks.py; nothing outside that declaration changes (see
the README, "Adding a task or a template").
"""

from tasks.superglue.data import DataError
from tasks.superglue.prompts import Prompt, Template
from tasks.superglue.protocols import PROTOCOLS, Prepared, prepare
from tasks.superglue.task import Task
from tasks.superglue.tasks import TASKS, get_task, get_template, load_split

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
    "load_split",
    "prepare",
]
