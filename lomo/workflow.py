"""What the Snakefile runs: the (model, variant, task) runs of a profile and their command
flags. Imported at every Snakemake parse, so it imports nothing heavy.

A run's settings are the profile's `finetune` settings, then its method's (`method_settings`),
then its task's (`task_settings`), then the run's own: one point of the method's `grid`, an
`extra_protocols` protocol, or a Figure 3 LoRA rank. The run's folder is named by its variant:
the method, plus `@key=value,...` for each of the run's own settings that differs from the
method's settings (so a Figure 3 run that equals a Table 3 run is the same run).
"""

import itertools
from pathlib import Path
from typing import Any

from lomo.io import read_yaml
from tasks.superglue import TASKS


def model_slug(name_or_path: str) -> str:
    """A path-safe name: hub ids such as huggyllama/llama-7b become huggyllama--llama-7b."""
    return name_or_path.strip("/").replace("/", "--")


def settings_to_flags(settings: dict[str, Any]) -> str:
    """`{"max_length": 256, "activation_checkpointing": False}` ->
    `--max-length 256 --no-activation-checkpointing` (the workflow builds commands with it)."""
    flags = []
    for key, value in settings.items():
        flag = key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(f"--{flag}" if value else f"--no-{flag}")
        elif isinstance(value, list):
            flags.append(f"--{flag} {' '.join(map(str, value))}")
        elif value is not None:
            flags.append(f"--{flag} {value}")
    return " ".join(flags)


def grid_points(grid: dict[str, list]) -> list[dict[str, Any]]:
    """Every combination of a method's grid, e.g. {lr: [a, b], warmup_ratio: [c]} ->
    [{lr: a, warmup_ratio: c}, {lr: b, warmup_ratio: c}]; no grid is one empty point."""
    keys = sorted(grid)  # each value list is read by its own key, whatever the YAML's order
    values = [grid[key] for key in keys]
    return [dict(zip(keys, point, strict=True)) for point in itertools.product(*values)]


def variant_name(method: str, own: dict[str, Any]) -> str:
    if not own:
        return method
    return method + "@" + ",".join(f"{key}={value}" for key, value in sorted(own.items()))


def method_of(variant: str) -> str:
    return variant.split("@")[0]


def expand_runs(config: dict, tasks: list[str]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """(model slug, variant, task) -> the run's `lomo finetune` settings (seed excluded)."""
    runs: dict[tuple[str, str, str], dict[str, Any]] = {}

    def add(model: str, method: str, task: str, own: dict[str, Any]) -> None:
        base = {
            **config["finetune"],
            **config["method_settings"].get(method, {}),
            **config["task_settings"].get(task, {}),
        }
        clash = sorted(set(own) & set(config["task_settings"].get(task, {})))
        if clash:
            raise ValueError(f"task_settings.{task} sets {clash}, which a grid or protocol varies")
        changed = {key: value for key, value in own.items() if base.get(key) != value}
        runs[(model_slug(model), variant_name(method, changed), task)] = {**base, **own}

    for model, task, method in itertools.product(config["models"], tasks, config["methods"]):
        for point in grid_points(config["grid"].get(method, {})):
            add(model, method, task, point)
            for protocol, protocol_tasks in config["extra_protocols"].items():
                if task in protocol_tasks:
                    add(model, method, task, {**point, "protocol": protocol})
    figure3 = config.get("figure3")  # the paper's protocol only, as in the paper
    if figure3:
        for model, task, method, rank in itertools.product(
            figure3["models"], figure3["tasks"], figure3["methods"], figure3["lora_r"]
        ):
            for point in grid_points(config["grid"].get(method, {})):
                add(model, method, task, {**point, "lora_r": rank})
    return runs


def selection_keys(config: dict) -> list[str]:
    """The settings the tables select over (the grid's keys): runs differing only in these
    are one table cell, chosen by the protocol's rule."""
    return sorted({key for grid in config["grid"].values() for key in grid})


def type_settings(config: dict) -> None:
    """The profile's `finetune`, `method_settings` and `task_settings` typed as `lomo finetune`
    types them (`--config 'finetune={epochs: 2}'` gives the string "2"), in place."""
    from lomo.train.config import coerce_settings

    config["finetune"] = coerce_settings(config.get("finetune", {}), "finetune")
    for block in ("method_settings", "task_settings"):
        config[block] = {
            name: coerce_settings(values or {}, f"{block}.{name}")
            for name, values in (config.get(block) or {}).items()
        }


def check_task_names(config: dict, schema_path: str | Path) -> None:
    """Every task the config names is declared in tasks.superglue.TASKS. The schema marks where
    task names go (`$defs/task`) without listing them, so the declarations stay the one list:
    it is filled in here and the config checked against the schema again."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    schema = read_yaml(schema_path)
    schema["$defs"]["task"]["enum"] = list(TASKS)
    error = best_match(Draft202012Validator(schema).iter_errors(config))
    if error is not None:
        where = ".".join(map(str, error.absolute_path))
        raise ValueError(
            f"config: {where}: {error.message} (tasks are declared in tasks/superglue/tasks.py)"
        )


def job_setting(
    config: dict, model: str, method: str, settings: dict[str, Any], gpus: int | None = None
):
    """The `lomo plan` setting of one job: its `lomo finetune` settings (FinetuneConfig's
    defaults where the profile sets none), its GPUs (`gpus`, else `model_gpus`, else
    `resources.gpus`; one process for 0) and the profile's DeepSpeed config."""
    import dataclasses

    from lomo.measure.plan import ROOT, Setting, zero3_settings
    from lomo.train.config import FinetuneConfig

    run = {**dataclasses.asdict(FinetuneConfig()), **settings}
    if gpus is None:
        gpus = config.get("model_gpus", {}).get(model, config["resources"]["gpus"])
    gpus = max(1, gpus)
    deepspeed = config.get("deepspeed_config")
    zero3 = zero3_settings(ROOT / deepspeed) if deepspeed else {}
    return Setting(
        **zero3,
        method=method,
        gpus=gpus,
        seq=run["max_length"],
        batch=max(1, run["micro_batch"] // gpus),  # lomo finetune: a multiple of the processes
        dtype=run["dtype"],
        ac=run["activation_checkpointing"],
        attn=run["attn_implementation"],
        chunked_loss=run["chunked_loss"],
        lora_r=run["lora_r"],
        lora_targets=tuple(run["lora_targets"]),
        deepspeed=bool(deepspeed),
        eval_batch=run["eval_batch"],
        eval_tokens=run["eval_tokens"],
        eval_prompt=run["max_length"],  # the scorer's truncation: the longest prompt possible
    )


def check_memory(config: dict, runs: dict[tuple[str, str, str], dict[str, Any]]) -> None:
    """With `gpu_memory_gib` in the profile: every job's training and evaluation fit it per
    GPU after `gpu_memory_reserve_gib` (default 1), as `lomo plan` predicts; else a ValueError
    naming the first job that does not fit and the largest setting that does."""
    memory = config.get("gpu_memory_gib")
    if memory is None:
        return
    from lomo.measure.plan import fit_check, load_shape, plan

    reserve = config.get("gpu_memory_reserve_gib", 1.0)
    models = {model_slug(name): name for name in config["models"]}
    checked: dict[tuple, tuple[bool, str]] = {}
    for (slug, variant, task), settings in runs.items():
        model, method = models[slug], method_of(variant)
        setting = job_setting(config, model, method, settings)
        if (model, setting) not in checked:
            try:
                shape = load_shape(model)
            except ValueError as error:
                raise ValueError(
                    f"gpu_memory_gib: cannot plan {model} ({error}); give a folder with its "
                    "config.json, or remove gpu_memory_gib"
                ) from None
            checked[model, setting] = fit_check(plan(shape, setting), memory, reserve)
        fits, message = checked[model, setting]
        if not fits:
            raise ValueError(f"job {slug}/{variant}/{task}: {message} (lomo plan)")
