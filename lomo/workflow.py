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
from lomo.train.methods import METHODS, optimizer_names
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


def distance_runs(
    config: dict, runs: dict[tuple[str, str, str], dict[str, Any]], tasks: list[str]
) -> tuple[str, list[tuple[str, str, str, int]]]:
    """The task and the (model slug, variant, task, seed) runs whose final weights `lomo
    sgd-claims --distance-runs` measures (claim 2), which therefore save them (--save-model):
    the first model's first-seed run of LOMO and of AdamW (their first grid point) on RTE, else
    on the first task."""
    task = "rte" if "rte" in tasks else tasks[0]
    first, seed = model_slug(config["models"][0]), config["seeds"][0]
    found = []
    for method in ("lomo", "adamw"):
        found += [
            (slug, variant, task, seed)
            for slug, variant, run_task in runs
            if (slug, run_task, method_of(variant)) == (first, task, method)
        ][:1]
    return task, found


def selection_keys(config: dict) -> list[str]:
    """The settings the tables select over (the grid's keys): runs differing only in these
    are one table cell, chosen by the protocol's rule."""
    return sorted({key for grid in config["grid"].values() for key in grid})


SCHEMA = Path(__file__).resolve().parents[1] / "config" / "schemas" / "config.schema.yaml"
NULLS = ("null", "Null", "NULL", "~")


def typed_by_schema(value: Any, schema: dict, defs: dict) -> Any:
    """`value` with each string that `schema` does not allow as a string typed as it declares:
    "43" an integer, "0.01" a number, "no" a boolean, "null" null, inside lists and mappings
    too (Snakemake's --config gives every value inside a list or mapping as a string). A string
    that is none of the declared types stays a string, for the schema check to name."""
    from lomo.train.config import BOOLEANS

    if "$ref" in schema:  # the schema's references are all to its own "#/$defs/..."
        schema = defs[schema["$ref"].removeprefix("#/$defs/")]
    for alternative in schema.get("oneOf", []):  # the first alternative that types it
        typed = typed_by_schema(value, alternative, defs)
        if typed != value:
            return typed
    if isinstance(value, dict):
        properties, others = schema.get("properties", {}), schema.get("additionalProperties")
        others = others if isinstance(others, dict) else {}
        return {k: typed_by_schema(v, properties.get(k, others), defs) for k, v in value.items()}
    if isinstance(value, list):
        return [typed_by_schema(item, schema.get("items", {}), defs) for item in value]
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else types
    if not isinstance(value, str) or "string" in types:
        return value
    if "null" in types and value in NULLS:
        return None
    if "boolean" in types and value.lower() in BOOLEANS:
        return BOOLEANS[value.lower()]
    for kind, parse in (("integer", int), ("number", int), ("number", float)):
        if kind in types:
            try:
                return parse(value)
            except ValueError:
                pass
    return value


def type_settings(config: dict) -> None:
    """The profile typed, in place: every block by the schema's declared types
    (`typed_by_schema`), then `finetune`, `method_settings` and `task_settings` as `lomo
    finetune` types them (--config 'finetune={epochs: 2}' gives the string "2")."""
    from lomo.train.config import coerce_settings

    schema = read_yaml(SCHEMA)
    config.update(typed_by_schema(config, schema, schema["$defs"]))
    config["finetune"] = coerce_settings(config.get("finetune") or {}, "finetune")
    for block in ("method_settings", "task_settings"):
        config[block] = {
            name: coerce_settings(values or {}, f"{block}.{name}")
            for name, values in (config.get(block) or {}).items()
        }


def check_config(config: dict, schema_path: str | Path = SCHEMA) -> None:
    """The config is valid by the schema, with task and method names from their declarations
    (tasks.superglue.TASKS, lomo.train.methods.METHODS): the schema marks where their names go
    (`$defs/task`, `$defs/method`, `$defs/optimizer`) without listing them, so the declarations
    stay the one list.
    A ValueError names the first problem and where it is."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    schema = read_yaml(schema_path)
    schema["$defs"]["task"]["enum"] = list(TASKS)
    schema["$defs"]["method"]["enum"] = list(METHODS)
    schema["$defs"]["optimizer"]["enum"] = optimizer_names()
    error = best_match(Draft202012Validator(schema).iter_errors(config))
    if error is not None:
        where = ".".join(map(str, error.absolute_path))
        declared = {
            tuple(TASKS): " (tasks are declared in tasks/superglue/tasks.py)",
            tuple(METHODS): " (methods are declared in lomo/train/methods.py)",
            tuple(optimizer_names()): " (measured methods are declared in lomo/train/methods.py)",
        }
        enum = tuple(error.validator_value) if error.validator == "enum" else ()
        hint = declared.get(enum, "")
        raise ValueError(f"config: {where}: {error.message}{hint}")


def check_models(config: dict) -> None:
    """Every model of `models`, `figure3.models` and `claims.sgd_models` is one a job can load
    (lomo.train.config.check_model_name), and Figure 3's models are among `models`."""
    from lomo.train.config import check_model_name

    figure3 = config.get("figure3") or {}
    # `lomo sgd-claims` also takes NAME:random (NAME's architecture, random weights)
    sgd_models = [name.removesuffix(":random") for name in config["claims"].get("sgd_models", [])]
    for key, names in (
        ("models", config["models"]),
        ("figure3.models", figure3.get("models")),
        ("claims.sgd_models", sgd_models),
    ):
        for name in names or []:
            try:
                check_model_name(name)
            except ValueError as error:
                raise ValueError(f"config: {key}: {error}") from None
    missing = [name for name in figure3.get("models", []) if name not in config["models"]]
    if missing:
        raise ValueError(
            f"config: figure3.models {missing} are not among models {config['models']}: add "
            "them to models, or leave Figure 3 out (--config figure3=null)"
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


def measurement_gpu_memory(command: str, flags: str) -> float:
    """GiB of one GPU that a `lomo memory` / `lomo throughput` measurement with these flags
    needs: the training peak of its largest configuration (optimizer x activation
    checkpointing, at its deepest `--layers`), as `lomo plan` predicts for one process."""
    import argparse
    import dataclasses
    import shlex

    from lomo.measure import memory, throughput
    from lomo.measure.plan import GIB, Setting, load_shape, plan
    from lomo.measure.workloads import declaration

    parser = argparse.ArgumentParser(prog="lomo")
    commands = parser.add_subparsers(dest="command")
    {"memory": memory, "throughput": throughput}[command].add_parser(commands, "")
    args = parser.parse_args([command, *shlex.split(flags)])
    shape = load_shape(args.model)
    layers = args.layers if isinstance(args.layers, list) else [args.layers]
    if any(layers):
        shape = dataclasses.replace(shape, layers=max(n for n in layers if n))
    peaks = [
        plan(
            shape,
            Setting(
                # lomo-optim's originals hold what ours hold: planned as ours
                method=declaration(optimizer).name,
                seq=args.seq,
                batch=args.batch,
                dtype=args.dtype,
                ac=ac == "on",
                attn=args.attn,
                chunked_loss=args.chunked_loss,
                deepspeed=False,
            ),
        )["peak"]
        for optimizer in args.optimizers
        for ac in (args.ac if isinstance(args.ac, list) else [args.ac])
    ]
    return max(peaks) / GIB


def sgd_claims_gpu_memory(models: list[str]) -> float:
    """GiB of one GPU that `lomo sgd-claims` needs at least: five fp32 copies of the largest
    model's weights (the implicit-batch measurement; its activations come on top)."""
    from lomo.measure.plan import GIB, count_parameters, load_shape

    return (
        max(5 * 4 * count_parameters(load_shape(m.removesuffix(":random"))) for m in models) / GIB
    )


def beyond_gpu_memory(config: dict) -> dict[str, float]:
    """The profile's GPU measurements that need more than `gpu_memory_gib` per GPU (after
    `gpu_memory_reserve_gib`, default 1) -> the GiB each needs; none without gpu_memory_gib.
    Keys: `memory_NAME`, `throughput_NAME` (their tables' names), `sgd_claims`."""
    memory = config.get("gpu_memory_gib")
    if memory is None:
        return {}
    limit = memory - config.get("gpu_memory_reserve_gib", 1.0)
    needs = {}
    for command in ("memory", "throughput"):
        for entry in config[command]:
            if entry.get("device") == "cuda":
                flags = settings_to_flags({k: v for k, v in entry.items() if k != "name"})
                needs[f"{command}_{entry['name']}"] = measurement_gpu_memory(command, flags)
    if "--device cuda" in config["claims"]["sgd_settings"]:
        needs["sgd_claims"] = sgd_claims_gpu_memory(config["claims"]["sgd_models"])
    return {name: need for name, need in needs.items() if need > limit}
