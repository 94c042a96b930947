"""`lomo finetune`'s settings: one typed config, from YAML, flags or the workflow's --config.

Every value is coerced once by its key's type (`coerce`: "3e-2" is a number, "no" a boolean,
"q_proj" a one-item list) and the whole config is validated before anything loads. No torch at
import: the Snakemake workflow coerces its `finetune` settings with this when it parses.
"""

import argparse
import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

from lomo import argtypes
from lomo.io import read_yaml
from lomo.loss_scaler import DynamicLossScaler
from lomo.train.methods import METHODS
from lomo.train.tracking import REPORT_TO, require_package
from tasks.superglue import PROTOCOLS, get_task, get_template

# The models built in (lomo.train.models); any other is a local folder or a hub id.
SMOLLM2 = "smollm2-135m"
TINY_LLAMA = "tiny-llama"
KNOWN_MODELS = (SMOLLM2, TINY_LLAMA)
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
DTYPE_NAMES = ("fp32", "bf16", "fp16")  # torch dtypes: lomo.train.models.DTYPES
CLIP_MODES = ("norm", "value", "none")


CHOICES = {
    "method": METHODS,  # the declared methods' names (lomo.train.methods)
    "dtype": DTYPE_NAMES,
    "clip_mode": CLIP_MODES,
    "protocol": PROTOCOLS,
    "reduction": ("sum", "mean"),
    "attn_implementation": ("eager", "sdpa"),
    "data_order": ("ours", "official"),
    "lr_schedule": ("ours", "official"),
    "report_to": REPORT_TO,
}

# The range of each numeric setting: its `lomo finetune --flag`'s type, and validate()'s check
# of values from YAML or the workflow.
RANGES = {
    "seed": argtypes.seed,
    "num_train": argtypes.positive_int,
    "num_dev": argtypes.positive_int,
    "num_eval": argtypes.positive_int,
    "train_size": argtypes.fraction_or_count,
    "test_size": argtypes.fraction_or_count,
    "max_length": argtypes.positive_int,
    "limit_train": argtypes.positive_int,
    "limit_eval": argtypes.positive_int,
    "epochs": argtypes.nonnegative_int,
    "global_batch": argtypes.positive_int,
    "micro_batch": argtypes.positive_int,
    "lr": argtypes.positive_float,
    "warmup_ratio": argtypes.fraction,
    "weight_decay": argtypes.nonnegative_float,
    "clip_value": argtypes.positive_float,
    "loss_scale_window": argtypes.positive_int,
    "force_overflow_step": argtypes.positive_int,
    "lora_r": argtypes.positive_int,
    "lora_alpha": argtypes.positive_int,
    "lora_dropout": argtypes.probability,
    "lora_lr": argtypes.positive_float,
    "lora_warmup_ratio": argtypes.fraction,
    "adam_eps": argtypes.positive_float,
    "eval_batch": argtypes.positive_int,
    "eval_tokens": argtypes.positive_int,
    "checkpoint_every_minutes": argtypes.positive_float,
    "time_limit_margin_minutes": argtypes.nonnegative_float,
}


@dataclass
class FinetuneConfig:
    """Everything that defines a run. YAML keys and `--flags` have these names."""

    model: str = "smollm2-135m"
    method: str = "lomo"
    task: str = "rte"
    seed: int = 42
    # data
    source: str = "local"
    data_dir: str | None = None
    protocol: str = "paper"
    # paper: sample sizes of train and eval (random.seed(0)); heldout: train / dev / test rows
    num_train: int = 1000
    num_dev: int = 500
    num_eval: int = 1000
    train_size: float = 0.5  # val-split only: count (>= 1) or fraction of validation
    test_size: float | None = None  # val-split only: default = the rest
    template: str = "lomo"
    max_length: int = 1024
    limit_train: int | None = None  # first N selected train examples (smoke runs)
    limit_eval: int | None = None
    # model
    dtype: str = "fp32"
    # fp16 on CPU is slow and refused, except here: the CPU rehearsal of the paper's fp16 runs
    allow_cpu_fp16: bool = False
    activation_checkpointing: bool = False
    attn_implementation: str = "sdpa"
    # The training loss through the chunked LM head + cross-entropy (lomo.loss): the same
    # gradients, without the whole batch's logits. Off: Hugging Face's `model(...).loss`.
    chunked_loss: bool = True
    # optimisation (paper: batch 16, 10 epochs, lr 3e-2 or 5e-2, warmup 0.05-0.2, norm 1.0)
    epochs: int = 10
    global_batch: int = 16
    micro_batch: int = 16
    sequential_updates: bool = False  # fused methods: one update per micro batch
    lr: float = 3e-2
    warmup_ratio: float = 0.05
    # ours: randperm seeded seed * 1000 + epoch (epochs 1..N); official: DistributedSampler(seed)
    # with set_epoch(0..N-1), i.e. randperm seeded seed + epoch - 1 (finetune.epoch_order)
    data_order: str = "ours"
    # ours: warmup ceil(T * ratio) steps from lr / warmup, then linear to lr / (T - warmup) at
    # the last step; official: the official code's schedulers (finetune.lr_factors)
    lr_schedule: str = "ours"
    weight_decay: float = 0.0
    clip_mode: str = "norm"
    clip_value: float = 1.0  # the max norm, or the max absolute value
    # fp16 dynamic loss scaling (lomo, adalomo, lora+lomo): the scale doubles after this many
    # clean steps in a row (lomo.loss_scaler explains the default)
    loss_scale_window: int = DynamicLossScaler.scale_window
    # Tests and smoke runs: step N's gradients become inf on every rank (an fp16 overflow), so
    # the step is skipped and the loss scale halves
    force_overflow_step: int | None = None
    # LoRA (paper: r 2 on q_proj and v_proj, alpha 16, dropout 0.05, AdamW lr 5e-4)
    lora_r: int = 2
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    lora_lr: float = 5e-4
    lora_warmup_ratio: float | None = None  # the adapters' AdamW; unset: warmup_ratio
    adam_eps: float = 1e-8  # AdamW (adamw, lora, lora+lomo); the official LoRA path used 1e-6
    # evaluation
    eval_batch: int = 16  # examples per evaluation forward, at most
    # Cached (prompt + answer) tokens per evaluation forward, at most: long prompts make smaller
    # batches, so the key/value cache fits the GPU (`lomo plan` prints the largest budget that
    # fits). None: eval_batch alone bounds a forward. Scores do not depend on it.
    eval_tokens: int | None = None
    reduction: str = "sum"
    save_model: bool = False
    # A checkpoint within an epoch every this many minutes (None: at each epoch's end only),
    # beside the one a SIGTERM / SIGUSR1 asks for: a preempted or timed-out job loses less.
    checkpoint_every_minutes: float | None = None
    # In a SLURM job: stop and checkpoint this long before the job's time limit
    # (SLURM_JOB_END_TIME), also allowing for the next step or evaluation to finish first.
    time_limit_margin_minutes: float = 10.0
    # Experiment tracking (lomo.train.tracking): per-step training scalars and per-epoch scores
    # to TensorBoard (<run folder>/tensorboard/) or W&B; none changes what the run computes.
    report_to: str = "none"
    # several processes: a DeepSpeed JSON config (ZeRO-3), or none for plain data parallelism
    deepspeed: str | None = None

    def validate(self) -> None:
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"{name}={getattr(self, name)!r}: expected one of {', '.join(allowed)}"
                )
        get_task(self.task)
        get_template(self.template)
        check_model_name(self.model)
        for name, check in RANGES.items():
            value = getattr(self, name)
            if value is not None:  # None: unset, where the field allows it
                try:
                    check(value)
                except argparse.ArgumentTypeError as error:
                    raise ValueError(f"{name}: {error}") from None
        method = METHODS[self.method]
        if self.epochs == 0 and method.trains:
            raise ValueError(f"epochs must be >= 1 for {self.method} (zero-shot only evaluates)")
        if self.global_batch % self.micro_batch:
            raise ValueError(
                f"global_batch {self.global_batch} is not a multiple of micro_batch "
                f"{self.micro_batch}"
            )
        self.validate_fused()
        self.validate_launch()

    def validate_fused(self) -> None:
        """What updating inside backward rules out: accumulating micro batches; and what only
        it has: fp16 loss scaling, which force_overflow_step tests."""
        method = METHODS[self.method]
        if method.fused and self.micro_batch < self.global_batch and not self.sequential_updates:
            raise ValueError(
                f"{self.method} updates the weights inside backward and keeps no gradients, so "
                f"it cannot accumulate micro batches of {self.micro_batch} into a global batch "
                f"of {self.global_batch}: set micro_batch = global_batch, or sequential_updates "
                "= true for one update per micro batch"
            )
        if self.force_overflow_step is not None and (self.dtype != "fp16" or not method.fused):
            fused = ", ".join(name for name, m in METHODS.items() if m.fused)
            raise ValueError(
                f"force_overflow_step needs dtype fp16 and a fused method ({fused}), which scale "
                f"the loss; got dtype {self.dtype}, method {self.method}"
            )

    def validate_launch(self) -> None:
        """What the machine and the launch must provide: a GPU for fp16 (unless allowed on CPU
        for a rehearsal), the DeepSpeed file, the tracker's package."""
        import torch  # here, not at the top: the workflow imports this module when it parses

        if self.dtype == "fp16" and not torch.cuda.is_available() and not self.allow_cpu_fp16:
            raise ValueError(
                "dtype fp16 needs a GPU: half-precision matmuls on CPU are very slow; use bf16 "
                "or fp32 on CPU, or set allow_cpu_fp16 for a rehearsal at tiny sizes"
            )

        if self.deepspeed is not None and not Path(self.deepspeed).is_file():
            raise ValueError(f"deepspeed: {self.deepspeed} is not a file (a DeepSpeed JSON config)")
        if self.deepspeed and not METHODS[self.method].zero3:
            zero3 = ", ".join(name for name, m in METHODS.items() if m.zero3)
            raise ValueError(
                f"--deepspeed (ZeRO-3) runs {zero3}, not {self.method}: it would need "
                "DeepSpeed's optimizer and its fp32 states; run it in one process or "
                "data-parallel (torchrun without --deepspeed)"
            )
        require_package(self.report_to)

    @property
    def updates_per_batch(self) -> int:
        fused = METHODS[self.method].fused
        return self.global_batch // self.micro_batch if fused and self.sequential_updates else 1


def check_model_name(name: str) -> None:
    """A model a job can load: a built-in name (KNOWN_MODELS), a local folder with a
    config.json, or a Hugging Face hub id owner/name (which the job downloads); a ValueError
    otherwise. A path-like name (/, ., ~) is a folder and must exist."""
    folder = Path(name).expanduser()
    if name in KNOWN_MODELS or (folder / "config.json").is_file():
        return
    if folder.exists() or name.startswith(("/", ".", "~")):
        raise ValueError(f"model folder {name} does not exist or has no config.json")
    if not HUB_ID.fullmatch(name):
        raise ValueError(
            f"unknown model {name!r}: expected one of {', '.join(KNOWN_MODELS)}, a local model "
            "folder with a config.json, or a Hugging Face hub id (owner/name)"
        )


BOOLEANS = {"true": True, "yes": True, "on": True, "1": True}
BOOLEANS |= {"false": False, "no": False, "off": False, "0": False}


def coerce(name: str, value: Any, kind: Any) -> Any:
    """One config value as its field's type, from YAML, a flag or Snakemake's --config: "3e-2"
    (which PyYAML reads as a string) is a number, "no" a boolean, "q_proj" a one-item list.
    Anything else is an error naming the key."""
    allowed = get_args(kind) or (kind,)
    if value is None:
        if type(None) in allowed:
            return None
        raise ValueError(f"{name}: a value is required, got null")
    if bool in allowed:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in BOOLEANS:
            return BOOLEANS[value.lower()]
        raise ValueError(f"{name}: expected true or false, got {value!r}")
    if kind == list[str]:
        items = value.replace(",", " ").split() if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ValueError(f"{name}: expected a list of names, got {value!r}")
        return items
    if int in allowed and not isinstance(value, bool):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if number.is_integer():
            return int(number)
        raise ValueError(f"{name}: expected a whole number, got {value!r}")
    if float in allowed and not isinstance(value, bool):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: expected a number, got {value!r}") from None
    if str in allowed and isinstance(value, str):
        return value
    raise ValueError(f"{name}: expected {kind}, got {value!r}")


def load_config(path: str | None, overrides: dict[str, Any]) -> FinetuneConfig:
    """YAML file (optional) then command-line overrides; every value is coerced to its key's
    type and checked once; unknown keys are an error."""
    values: dict[str, Any] = {}
    if path:
        values = read_yaml(path) or {}
        if not isinstance(values, dict):
            raise ValueError(
                f"{path}: expected a mapping of settings, got a {type(values).__name__}"
            )
    values.update({k: v for k, v in overrides.items() if v is not None})
    config = FinetuneConfig(**coerce_settings(values))
    config.validate()
    return config


def coerce_settings(values: dict[str, Any], where: str = "") -> dict[str, Any]:
    """Some of the settings, each coerced by its key's type (`coerce`); an unknown key is an
    error. `where` prefixes the message (the workflow names its config block)."""
    types = {f.name: f.type for f in dataclasses.fields(FinetuneConfig)}
    unknown = sorted(set(values) - set(types))
    prefix = f"{where}: " if where else ""
    if unknown:
        raise ValueError(
            f"{prefix}unknown config key(s) {unknown}; known: {', '.join(sorted(types))}"
        )
    try:
        return {k: coerce(k, v, types[k]) for k, v in values.items()}
    except ValueError as error:
        raise ValueError(f"{prefix}{error}") from None
