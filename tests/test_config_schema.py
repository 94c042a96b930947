"""The workflow schema's `finetune` settings against FinetuneConfig, field by field: the same
names, JSON types from the type hints, enums from CHOICES, and every bound the schema states
is the one FinetuneConfig.validate() enforces (probed on both sides of it), and none beyond.
A planted drift of each kind is reported."""

import copy
import dataclasses
from typing import get_args

import pytest
import yaml
from paths import ROOT

from lomo.train.config import CHOICES, FinetuneConfig

SCHEMA = ROOT / "config/schemas/config.schema.yaml"
# Each run's own settings, which the workflow sets from the run (model, method, task, seed)
# or from its profile (data source, DeepSpeed config): not part of the `finetune` block.
SET_BY_THE_WORKFLOW = {"model", "method", "task", "seed", "source", "data_dir", "save_model"}
SET_BY_THE_WORKFLOW |= {"deepspeed"}
JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean", list[str]: "array"}
BOUNDS = ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum")


def finetune_properties() -> dict:
    return yaml.safe_load(SCHEMA.read_text())["$defs"]["finetune_settings"]["properties"]


def json_types(kind) -> set[str]:
    """`int | None` -> {"integer", "null"}."""
    if kind == list[str]:
        return {"array"}
    return {"null" if k is type(None) else JSON_TYPES[k] for k in get_args(kind) or (kind,)}


def accepts(name: str, value) -> bool:
    """validate() passes with `value` for `name`, the other settings set as it needs."""
    settings = {name: value}
    if name in ("global_batch", "micro_batch"):  # the global batch is whole micro batches
        settings = {"global_batch": value, "micro_batch": value}
    if name == "epochs":  # a training method needs one epoch at least
        settings["method"] = "zero-shot"
    if name == "force_overflow_step":  # it needs fp16 weights
        settings.update(dtype="fp16", allow_cpu_fp16=True)
    try:
        FinetuneConfig(**settings).validate()
    except ValueError:
        return False
    return True


def enforced_bounds(name: str, stated: dict, integer: bool) -> list[str]:
    """Where validate() disagrees with the bounds `stated` for `name` (none stated: a value
    far below and far above must pass)."""
    step = 1 if integer else 1e-6
    far = 10**6
    problems = []
    probes = {  # bound: (a value that must pass, one that must fail)
        "minimum": lambda b: (b, b - step),
        "exclusiveMinimum": lambda b: (b + step, b),
        "maximum": lambda b: (b, b + step),
        "exclusiveMaximum": lambda b: (b - step, b),
    }
    for bound, bound_value in stated.items():
        good, bad = probes[bound](bound_value)
        if not accepts(name, good) or accepts(name, bad):
            problems.append(f"{name}: validate() does not enforce {bound} {bound_value}")
    if not {"minimum", "exclusiveMinimum"} & set(stated) and not accepts(name, -far):
        problems.append(f"{name}: validate() has a lower bound the schema does not state")
    if not {"maximum", "exclusiveMaximum"} & set(stated) and not accepts(name, far):
        problems.append(f"{name}: validate() has an upper bound the schema does not state")
    return problems


def drift(properties: dict) -> list[str]:
    """Every difference between the schema's `finetune` properties and FinetuneConfig."""
    fields = {
        f.name: f.type
        for f in dataclasses.fields(FinetuneConfig)
        if f.name not in SET_BY_THE_WORKFLOW
    }
    problems = [
        f"{name}: in FinetuneConfig, not in the schema" for name in fields.keys() - properties
    ]
    problems += [
        f"{name}: in the schema, not in FinetuneConfig" for name in properties.keys() - fields
    ]
    for name in sorted(fields.keys() & properties.keys()):
        kind, schema = fields[name], properties[name]
        if name in CHOICES:
            if schema.get("enum") != list(CHOICES[name]):
                problems.append(
                    f"{name}: enum {schema.get('enum')}, expected {list(CHOICES[name])}"
                )
            continue
        stated = schema.get("type")
        stated = set(stated) if isinstance(stated, list) else {stated}
        if stated != json_types(kind):
            problems.append(f"{name}: type {sorted(stated)}, expected {sorted(json_types(kind))}")
        if kind == list[str] and schema.get("items") != {"type": "string"}:
            problems.append(f"{name}: items {schema.get('items')}, expected strings")
        if {"integer", "number"} & json_types(kind):
            bounds = {b: schema[b] for b in BOUNDS if b in schema}
            problems += enforced_bounds(name, bounds, integer=int in get_args(kind) + (kind,))
    return problems


def test_the_schema_states_finetune_config_field_by_field():
    assert drift(finetune_properties()) == []


@pytest.mark.parametrize(
    "plant, reported",
    [
        (lambda p: p["max_length"].update(minimum=8), "max_length: validate() does not enforce"),
        (lambda p: p["lr"].pop("exclusiveMinimum"), "lr: validate() has a lower bound"),
        (lambda p: p["warmup_ratio"].pop("exclusiveMaximum"), "warmup_ratio: validate() has an"),
        (lambda p: p["lr"].update(type="integer"), "lr: type ['integer'], expected ['number']"),
        (lambda p: p["eval_tokens"].update(type="integer"), "eval_tokens: type ['integer']"),
        (lambda p: p["dtype"].update(enum=["fp32", "fp16"]), "dtype: enum ['fp32', 'fp16']"),
        (lambda p: p.pop("lora_r"), "lora_r: in FinetuneConfig, not in the schema"),
        (lambda p: p.update(lora_rank={"type": "integer"}), "lora_rank: in the schema, not in"),
        (lambda p: p["lora_targets"].update(items={"type": "integer"}), "lora_targets: items"),
    ],
)
def test_a_planted_drift_is_reported(plant, reported):
    properties = copy.deepcopy(finetune_properties())
    plant(properties)
    assert any(problem.startswith(reported) for problem in drift(properties)), drift(properties)
