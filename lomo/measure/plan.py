"""`lomo plan`: will fine-tuning a LLaMA of a given size fit on N GPUs? The per-GPU peak by
component, and the command that runs it.

The prediction is a sum of tensor bytes, phase by phase (see `plan`): every coefficient below
was read off the project's own census (`lomo memory`, lomo/measure/census.py: live tensor bytes by
category at every operator), at the LLaMA-7B shape (paper/tables/memory_llama-7b_raw.json,
bf16, eager attention, seq 512, batch 8) and on small random LLaMA configs that vary one
dimension at a time (hidden, MLP width, kv heads, sequence, dtype, attention), and checked
against per-rank peaks under 2-rank ZeRO-3 (scripts/plan_validation.py; table in
paper/tables/plan_validation.md). What the census cannot see is left to `--reserve`: the CUDA
context, NCCL buffers, and the caching allocator's rounding and fragmentation.

With `--deepspeed` (the default) LOMO, AdaLomo and LoRA run as `lomo finetune --deepspeed
config/deepspeed/zero3.json` under torchrun, as the paper profile launches them (one GPU
included): each rank holds 1/N of every base weight and gathers a module's weights only while
it runs (LoRA's adapters stay replicated). SGD and AdamW keep mixed-precision master weights
(as in Table 1); with `--deepspeed` they are planned as DeepSpeed's own ZeRO-3 optimizer would
run them (partitioned gradients and states, as in the paper's Table 2), which `lomo finetune`
does not do. With `--no-deepspeed` every method is one process, or plain data parallelism
under torchrun: every GPU holds the whole model, so the plan is the one-GPU plan.
"""

import argparse
import json
import math
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from lomo.measure.workloads import LLAMA_SHAPES, LLAMA_VOCAB

ROOT = Path(__file__).resolve().parents[2]
ZERO3_CONFIG = "config/deepspeed/zero3.json"  # relative to the repository root
GIB = 2**30
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
METHODS = ("lomo", "adalomo", "sgd", "adamw", "lora")
FUSED = ("lomo", "adalomo")  # update inside backward: at most one gradient alive
HUB_NAMES = {name: f"huggyllama/{name}" for name in LLAMA_SHAPES}  # as in config/paper.yaml
COMPONENTS = (
    "parameters",
    "gathered",
    "activations",
    "gradients",
    "update_temporaries",
    "logits",
    "optimizer_states",
    "lora_adapters",
)


@dataclass(frozen=True)
class Shape:
    """The dimensions of a LLaMA-family decoder that memory depends on."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool = False


@dataclass(frozen=True)
class Setting:
    """How it runs: `batch` is the micro batch of one GPU (sequences of `seq` tokens)."""

    method: str = "lomo"
    gpus: int = 1
    seq: int = 512
    batch: int = 8
    dtype: str = "fp16"
    ac: bool = True
    attn: str = "eager"
    loss_chunk: int | None = None  # tokens per chunk of a chunked cross-entropy; None: full
    lora_r: int = 2
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    deepspeed: bool = True  # ZeRO-3 (False: one process, or plain data parallelism)
    persistence_threshold: int = 100_000  # zero_optimization.stage3_param_persistence_threshold
    prefetch_bucket: int = 50_000_000  # zero_optimization.stage3_prefetch_bucket_size
    sub_group_size: int = 1_000_000_000  # zero_optimization.sub_group_size (DeepSpeed default)


def load_shape(size: str) -> Shape:
    """`7b` / `llama-7b` (LLaMA-1 shapes), or a Hugging Face config.json (file or folder)."""
    key = size.lower() if size.lower().startswith("llama-") else f"llama-{size.lower()}"
    if key in LLAMA_SHAPES:
        hidden, heads, intermediate, layers = LLAMA_SHAPES[key]
        return Shape(key, hidden, intermediate, layers, heads, heads, LLAMA_VOCAB)
    path = Path(size)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        sizes = ", ".join(name.removeprefix("llama-") for name in LLAMA_SHAPES)
        raise ValueError(f"unknown size {size!r}: expected one of {sizes} or a config.json path")
    config = json.loads(path.read_text())
    try:
        heads = config["num_attention_heads"]
        return Shape(
            name=str(path.parent if path.name == "config.json" else path),
            hidden=config["hidden_size"],
            intermediate=config["intermediate_size"],
            layers=config["num_hidden_layers"],
            heads=heads,
            kv_heads=config.get("num_key_value_heads") or heads,
            vocab=config["vocab_size"],
            tied=bool(config.get("tie_word_embeddings", False)),
        )
    except KeyError as missing:
        raise ValueError(f"{path}: no {missing} (not a LLaMA-style config)") from None


def llama_config(shape: Shape, attn: str = "sdpa"):
    """The transformers `LlamaConfig` of a shape (for random-weight measurements)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        tie_word_embeddings=shape.tied,
        attn_implementation=attn,
    )


def parameter_sizes(shape: Shape) -> dict[str, int]:
    """Element count of every parameter (one layer's named once, `layer.*`)."""
    head_dim = shape.hidden // shape.heads
    kv_width = shape.kv_heads * head_dim
    h, i = shape.hidden, shape.intermediate
    sizes = {"embed": shape.vocab * h, "final_norm": h}
    if not shape.tied:
        sizes["lm_head"] = shape.vocab * h
    sizes.update(
        {
            "layer.q": h * h,
            "layer.k": h * kv_width,
            "layer.v": h * kv_width,
            "layer.o": h * h,
            "layer.gate": h * i,
            "layer.up": h * i,
            "layer.down": i * h,
            "layer.norm1": h,
            "layer.norm2": h,
        }
    )
    return sizes


def count_parameters(shape: Shape) -> int:
    sizes = parameter_sizes(shape)
    return sum(n * (shape.layers if name.startswith("layer.") else 1) for name, n in sizes.items())


def layer_activation_bytes(shape: Shape, setting: Setting) -> int:
    """Bytes one decoder layer saves for backward (census: the slope of `activations` in depth).

    Per token, p = bytes per element of the model's dtype, h_kv = the k/v width:
    - each of the 2 RMSNorms: its fp32 input (4h; transformers upcasts) and its output (p h);
    - attention: 6 tensors of p bytes, 4 of width h (q and the attention output with its
      copies on the way to o_proj) and 2 of width h_kv (k and v: halving the kv heads of a
      small config removes exactly 2 x p x h_kv / 2 bytes per token in the census);
    - MLP: gate, SiLU(gate), up and their product: 4 tensors of width I;
    - eager attention keeps the score matrix: its fp32 softmax (4 bytes per score) and the cast
      back to the dtype (p more, none in fp32): heads x seq scores per token; sdpa keeps only
      its fp32 log-sum-exp, 4 bytes per head;
    - 8 bytes per token of position bookkeeping.
    Census check: LLaMA-7B bf16 eager at seq 512 gives 284,680 bytes per token, as measured
    (24h + 8I + 6 x 32 x 512 + 8); the small configs match to the byte in bf16 and fp32.
    """
    p = DTYPE_BYTES[setting.dtype]
    h, i = shape.hidden, shape.intermediate
    kv_width = shape.kv_heads * (h // shape.heads)
    per_token = 2 * (4 * h + p * h) + p * (4 * h + 2 * kv_width) + 4 * p * i + 8
    if setting.attn == "eager":
        per_token += shape.heads * setting.seq * (4 + (p if p != 4 else 0))
    else:
        per_token += 4 * shape.heads
    return per_token * setting.seq * setting.batch


def uses_zero3(setting: Setting) -> bool:
    """ZeRO-3 for LOMO/AdaLomo/LoRA with --deepspeed (the paper profile launches them so, also
    on one GPU); for SGD/AdamW on several GPUs (DeepSpeed's optimizer partitions gradients and
    states). Without it every GPU holds the whole model: the one-GPU footprint."""
    return setting.deepspeed and (setting.method not in ("sgd", "adamw") or setting.gpus > 1)


def check_setting(setting: Setting) -> None:
    if setting.method not in METHODS:
        raise ValueError(f"unknown method {setting.method!r}: expected one of {', '.join(METHODS)}")
    if setting.gpus < 1:
        raise ValueError(f"need at least one GPU, got {setting.gpus}")
    for name in ("seq", "batch"):
        if getattr(setting, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(setting, name)}")
    if setting.loss_chunk is not None and setting.loss_chunk < 1:
        raise ValueError(f"loss chunk must be >= 1 token, got {setting.loss_chunk}")


def lora_parameter_count(shape: Shape, setting: Setting, sizes: dict[str, int]) -> int:
    """LoRA adapters: r x (in + out) per targeted matrix per layer."""
    h, i = shape.hidden, shape.intermediate
    widths = {"q_proj": (h, h), "k_proj": (h, sizes["layer.k"] // h)}
    widths |= {"v_proj": widths["k_proj"], "o_proj": (h, h)}
    widths |= {"gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
    unknown = [t for t in setting.lora_targets if t not in widths]
    if unknown:
        raise ValueError(f"unknown LoRA target(s) {unknown}: expected some of {list(widths)}")
    per_layer = sum(setting.lora_r * sum(widths[t]) for t in setting.lora_targets)
    return per_layer * shape.layers


def optimizer_state_bytes(
    shape: Shape, setting: Setting, sizes: dict[str, int], shard: int, lora_params: int
) -> int:
    """Optimizer states. LOMO: none. AdaLomo: fp32 row and column second moments of each matrix
    (a vector for 1-d weights). SGD/AdamW with an fp16/bf16 model: fp32 master weights (4
    bytes) and, AdamW, two fp32 moments (8 more): Table 1's 25.10 / 75.31 GB at 7B. Sharded
    over the GPUs under ZeRO-3. LoRA: AdamW moments of the adapters."""
    master = 4 if DTYPE_BYTES[setting.dtype] < 4 else 0
    n_params = count_parameters(shape)
    if setting.method == "adalomo":
        count = {k: shape.layers if k.startswith("layer.") else 1 for k in sizes}
        return 4 * sum(count[k] * _factored(k, n, shape) for k, n in sizes.items())
    if setting.method == "sgd":
        return master * math.ceil(n_params / shard)
    if setting.method == "adamw":
        return (master + 8) * math.ceil(n_params / shard)
    if setting.method == "lora":
        return 8 * lora_params  # AdamW's two fp32 moments; the adapters are fp32
    return 0


def plan(shape: Shape, setting: Setting) -> dict:
    """The per-GPU peak: the largest of four moments of a training step, each a sum of parts.

    - forward: a layer's forward while DeepSpeed gathers the next parameters ahead;
    - loss: end of forward and start of backward; every layer's saved activations (with
      activation checkpointing: each layer's input only) and the loss's logits are alive;
    - head backward: the LM head's gradient is formed and (fused methods) applied;
    - layer backward: the last decoder layer's backward (with checkpointing: its activations
      recomputed), its largest matrix's gradient and the activation gradients.
    SGD and AdamW add one more: the end of backward, every gradient alive before the step.
    Resident at every moment: this GPU's parameter partition, the optimizer states, adapters.
    """
    check_setting(setting)
    p = DTYPE_BYTES[setting.dtype]
    gpus, h, i, vocab = setting.gpus, shape.hidden, shape.intermediate, shape.vocab
    tokens = setting.seq * setting.batch
    sizes = parameter_sizes(shape)
    n_params = count_parameters(shape)
    fused = setting.method in FUSED
    zero3 = uses_zero3(setting)
    shard = gpus if zero3 else 1
    layer_sizes = {k: n for k, n in sizes.items() if k.startswith("layer.")}
    largest_layer_matrix = max(layer_sizes.values())
    head_matrix = sizes.get("lm_head", sizes["embed"])

    # Parameters: this rank's flat partition of each (ceil(n / N) elements, the last one
    # padded), plus, under ZeRO-3, a full resident copy of every parameter smaller than the
    # persistence threshold (DeepSpeed keeps those gathered: the norms at LLaMA sizes).
    def count(name: str) -> int:
        return shape.layers if name.startswith("layer.") else 1

    resident = sum(math.ceil(n / shard) * count(k) for k, n in sizes.items()) * p
    if zero3:
        small = [k for k, n in sizes.items() if n < setting.persistence_threshold]
        resident += sum(sizes[k] * count(k) for k in small) * p

    # Gathered while a module runs (ZeRO-3): the LM head during the loss and its backward; a
    # whole decoder layer during its backward (its weights stay gathered from the recompute to
    # the backward) plus the prefetch bucket of the next one. Persistent ones are resident.
    def gathered(names: list[str]) -> int:
        if not zero3:
            return 0
        return sum(sizes[k] for k in names if sizes[k] >= setting.persistence_threshold) * p

    # In the forward DeepSpeed gathers ahead up to a prefetch bucket of parameters, and while
    # it unpacks a bucket both its flat all-gather buffer and the per-parameter copies exist:
    # twice the bucket (measured under 2-rank ZeRO-3: a 13M-element model is gathered whole,
    # twice, in the update pass's forward).
    partitioned = sum(n * count(k) for k, n in sizes.items() if n >= setting.persistence_threshold)
    gathered_forward = 2 * min(setting.prefetch_bucket, partitioned) * p if zero3 else 0
    gathered_head = gathered(["lm_head" if "lm_head" in sizes else "embed"])
    gathered_layer = gathered(list(layer_sizes))
    if zero3:
        gathered_layer += min(setting.prefetch_bucket, sum(layer_sizes.values())) * p

    # Optimizer states. LOMO: none. AdaLomo: fp32 row and column second moments of each matrix
    # (a vector for 1-d weights). SGD/AdamW with an fp16/bf16 model: fp32 master weights (4
    # bytes) and, AdamW, two fp32 moments (8 more): Table 1's 25.10 / 75.31 GB at 7B. Sharded
    # over the GPUs under ZeRO-3. LoRA: AdamW moments of the adapters.
    lora_params = lora_parameter_count(shape, setting, sizes) if setting.method == "lora" else 0
    states = optimizer_state_bytes(shape, setting, sizes, shard, lora_params)
    adapters = 4 * lora_params * (1 + 1)  # fp32 adapter weights and their gradients

    # Activations. Without checkpointing every layer's saved tensors; with it each layer's
    # input (p h per token, the census's slope in depth) and, in a layer's backward, that
    # layer recomputed. At the loss the final RMSNorm's saved tensors come on top: 4 p h per
    # token (census: 8h in bf16, 16h in fp32).
    layer_act = layer_activation_bytes(shape, setting)
    checkpoints = shape.layers * tokens * p * h
    stored_forward = checkpoints if setting.ac else shape.layers * layer_act
    head_act = 4 * p * h * tokens
    # Activation gradients inside a layer's backward: p (I + 2h) per token (census, small
    # configs with a vocabulary too small for the loss to be the peak).
    act_grads = p * (i + 2 * h) * tokens

    # Logits of the loss (transformers: logits in the dtype, upcast to fp32, log-softmax): at
    # the start of backward the saved fp32 log-softmax output, its gradient and the gradient of
    # its input are alive, 12 bytes per logit (census at 7B: 4 under activations, 8 other);
    # under ZeRO-3 DeepSpeed's module hooks keep the lm_head output (p more). In the head's
    # backward the fp32 logit gradient and its cast to the dtype remain (4 + p, 4 in fp32).
    # A chunked cross-entropy holds one chunk of logits at a time, plus the fp32 gradient of
    # the hidden states of the whole batch, accumulated chunk by chunk.
    logit_tokens = tokens if setting.loss_chunk is None else min(setting.loss_chunk, tokens)
    loss_bytes_per_logit = 12 + (p if zero3 and setting.loss_chunk is None else 0)
    logits_loss = loss_bytes_per_logit * logit_tokens * vocab
    logits_head = (4 + (p if p < 4 else 0)) * logit_tokens * vocab
    if setting.loss_chunk is not None:
        logits_loss += 4 * h * tokens
        logits_head += 4 * h * tokens

    # Gradients and the update's temporaries. Fused: the gradient of one parameter at a time,
    # full size on every rank (the hook runs before the reduce-scatter), plus the update's fp32
    # copy of this rank's slice (none in fp32: the copy aliases). AdaLomo's update also makes
    # a full-size fp32 copy of the averaged gradient (census: +1x the largest gradient in fp32
    # on top of LOMO at 7B). SGD/AdamW: every gradient (partitioned under ZeRO-3) and the fp32
    # copy of the largest one in the master-weight step. LoRA: the adapters' (counted above).
    def update_temps(n: int) -> int:
        if setting.method == "lomo":
            return (4 if p < 4 else 0) * math.ceil(n / shard)
        if setting.method == "adalomo":
            return 4 * n + (4 if p < 4 else 0) * math.ceil(n / shard)
        if setting.method in ("sgd", "adamw"):
            return 4 * math.ceil(n / shard)
        return 0

    trainable = setting.method != "lora"
    head_grad = p * head_matrix if trainable else 0
    layer_grad = p * largest_layer_matrix if trainable else 0
    resident_parts = {
        "parameters": resident,
        "optimizer_states": states,
        "lora_adapters": adapters,
    }
    zero = dict.fromkeys(COMPONENTS, 0)
    phases = {
        # inside a layer's forward: its MLP's three I-wide outputs (gate, SiLU, up) alive
        "forward": {
            **zero,
            **resident_parts,
            "gathered": gathered_forward,
            "activations": stored_forward + 3 * p * i * tokens,
        },
        "loss": {
            **zero,
            **resident_parts,
            "gathered": gathered_head,
            "activations": stored_forward + head_act,
            "logits": logits_loss,
        },
        "head backward": {
            **zero,
            **resident_parts,
            "gathered": gathered_head,
            "activations": stored_forward + head_act,
            "gradients": head_grad,
            "update_temporaries": update_temps(head_matrix) if trainable else 0,
            "logits": logits_head,
        },
        "layer backward": {
            **zero,
            **resident_parts,
            "gathered": gathered_layer,
            "activations": (checkpoints + layer_act) if setting.ac else stored_forward,
            "gradients": layer_grad + act_grads,
            "update_temporaries": update_temps(largest_layer_matrix) if trainable else 0,
        },
    }
    if not fused and trainable:
        # Every gradient alive before the step: all of the model's, partitioned under ZeRO-3
        # (in the census at 7B with checkpointing: 12.55 GB of gradients at the peak).
        # DeepSpeed's ZeRO-3 optimizer steps one sub-group of its partition at a time, with an
        # fp32 copy of that sub-group's gradients (at most sub_group_size elements).
        if zero3:
            fp32_grads = 4 * min(math.ceil(n_params / shard), setting.sub_group_size)
        else:
            fp32_grads = update_temps(max(head_matrix, largest_layer_matrix))
        phases["end of backward"] = {
            **zero,
            **resident_parts,
            "gradients": p * math.ceil(n_params / shard),
            "update_temporaries": fp32_grads,
        }
        # The last layer's backward comes right after the head's: its gradients join the head's.
        last_layer = p * math.ceil(sum(layer_sizes.values()) / shard)
        phases["layer backward"]["gradients"] += p * math.ceil(head_matrix / shard) + last_layer
    totals = {name: sum(parts.values()) for name, parts in phases.items()}
    peak_phase = max(totals, key=totals.get)
    largest_gradient = max(head_matrix, largest_layer_matrix) * p if trainable else 0
    return {
        "shape": shape,
        "setting": setting,
        "zero3": zero3,
        "num_params": n_params,
        "largest_layer_params": max(sizes.values()),
        "largest_gradient": largest_gradient,
        "phases": phases,
        "totals": totals,
        "peak_phase": peak_phase,
        "peak": totals[peak_phase],
        # Table 1's categories. Activations as the paper defines them, the growth across the
        # forward: the saved tensors plus, at its end, the logits (p) and their fp32
        # log-softmax (4 bytes per logit). The census's own maximum of saved tensors adds, with
        # checkpointing, one recomputed layer in backward instead of the logits.
        "table1": {
            "parameters": resident,
            "gradients": p * math.ceil(n_params / shard) if not fused else largest_gradient,
            "optimizer_states": states,
            "activations": stored_forward + head_act + (p + 4) * logit_tokens * vocab,
        },
    }


def _factored(name: str, numel: int, shape: Shape) -> int:
    """AdaLomo's second-moment size for one parameter: rows + columns of a matrix, or the
    vector itself."""
    if name.endswith(("norm", "norm1", "norm2")):
        return numel
    h = shape.hidden
    if name in ("embed", "lm_head"):
        return shape.vocab + h
    if name in ("layer.gate", "layer.up", "layer.down"):
        return shape.intermediate + h
    return h + numel // h


def zero3_settings(path: str | Path) -> dict[str, int]:
    """The ZeRO-3 sizes the plan uses, read from a DeepSpeed JSON config (DeepSpeed's defaults
    where it sets none)."""
    zero = json.loads(Path(path).read_text()).get("zero_optimization", {})
    if zero.get("stage") != 3:
        raise ValueError(f"{path}: not a ZeRO stage 3 config")
    return {
        "persistence_threshold": int(zero.get("stage3_param_persistence_threshold", 100_000)),
        "prefetch_bucket": int(zero.get("stage3_prefetch_bucket_size", 50_000_000)),
        "sub_group_size": int(zero.get("sub_group_size", 1_000_000_000)),
    }


def finetune_command(shape: Shape, setting: Setting, task: str, out: str) -> list[str] | None:
    """The run this plan is for, or None where `lomo finetune` cannot run it (SGD/AdamW under
    ZeRO-3). ZeRO-3 and several GPUs go through torchrun, as config/paper.yaml does."""
    zero3 = uses_zero3(setting)
    if zero3 and setting.method in ("sgd", "adamw"):
        return None
    global_batch = setting.batch * setting.gpus
    model = HUB_NAMES.get(shape.name, shape.name)
    flags = [
        "finetune",
        f"--model={model}",
        f"--method={setting.method}",
        f"--task={task}",
        f"--dtype={setting.dtype}",
        f"--max-length={setting.seq}",
        f"--global-batch={global_batch}",
        f"--micro-batch={global_batch}",
        f"--attn-implementation={setting.attn}",
        "--activation-checkpointing" if setting.ac else "--no-activation-checkpointing",
        f"--out={out}",
    ]
    if setting.method == "lora":
        flags += [f"--lora-r={setting.lora_r}", "--lora-targets", *setting.lora_targets]
    if zero3:
        flags.append(f"--deepspeed={ZERO3_CONFIG}")
    if zero3 or setting.gpus > 1:
        launcher = ["python", "-m", "torch.distributed.run", f"--nproc_per_node={setting.gpus}"]
        return [*launcher, "-m", "lomo.cli", *flags]
    return ["lomo", *flags]


def format_plan(
    result: dict, memory_gb: float, reserve_gb: float, command: list[str] | None
) -> str:
    shape, setting = result["shape"], result["setting"]
    phases, peak_phase = result["phases"], result["peak_phase"]
    loss = "full logits" if setting.loss_chunk is None else f"loss chunks of {setting.loss_chunk}"
    lines = [
        f"{shape.name}: {result['num_params'] / 1e9:.2f}B parameters, {shape.layers} layers, "
        f"hidden {shape.hidden}, vocabulary {shape.vocab}",
        f"{setting.method} on {setting.gpus} GPU(s)"
        + (" with ZeRO-3" if result["zero3"] else "")
        + f", {setting.dtype}, batch {setting.batch} x {setting.seq} tokens per GPU, "
        f"activation checkpointing {'on' if setting.ac else 'off'}, {setting.attn} attention, "
        f"{loss}",
        "",
        f"{'GiB per GPU':20}" + "".join(f"{name:>16}" for name in phases),
    ]
    for component in COMPONENTS:
        values = [phases[name][component] / GIB for name in phases]
        lines.append(f"{component:20}" + "".join(f"{v:16.3f}" for v in values))
    lines.append(f"{'total':20}" + "".join(f"{t / GIB:16.3f}" for t in result["totals"].values()))
    needed = result["peak"] / GIB + reserve_gb
    verdict = "fits" if needed <= memory_gb else "does NOT fit"
    lines += [
        "",
        f"peak {result['peak'] / GIB:.2f} GiB (at the {peak_phase}) + reserve {reserve_gb:.2f} "
        f"GiB = {needed:.2f} GiB: {verdict} in {memory_gb:g} GiB per GPU",
    ]
    if command is None:
        lines.append(
            f"lomo finetune runs {setting.method} without ZeRO-3 (one process or plain data "
            "parallelism: --no-deepspeed plans that); this plan is DeepSpeed's own ZeRO-3 "
            "optimizer"
        )
    else:
        lines += ["run:", "  " + shlex.join(command)]
    return "\n".join(lines)


def run_plan(args: argparse.Namespace) -> None:
    shape = load_shape(args.size)
    zero3 = zero3_settings(args.deepspeed_config)
    setting = Setting(
        **zero3,
        method=args.method,
        gpus=args.gpus,
        seq=args.seq,
        batch=args.batch,
        dtype=args.dtype,
        ac=args.activation_checkpointing,
        attn=args.attn,
        loss_chunk=args.loss_chunk,
        lora_r=args.lora_r,
        deepspeed=args.deepspeed,
    )
    if args.memory <= 0 or args.reserve < 0:
        raise ValueError(f"need --memory > 0 and --reserve >= 0, got {args.memory}, {args.reserve}")
    result = plan(shape, setting)
    command = finetune_command(shape, setting, args.task, args.out)
    print(format_plan(result, args.memory, args.reserve, command))
    fits = result["peak"] / GIB + args.reserve <= args.memory
    if args.json:
        print(
            json.dumps(
                {"peak_gib": result["peak"] / GIB, "fits": fits, "phase": result["peak_phase"]}
            )
        )


def add_parser(subparsers: argparse._SubParsersAction, summary: str) -> None:
    parser = subparsers.add_parser(
        "plan",
        help=summary,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("size", help="7b, 13b, 30b, 65b, or a Hugging Face config.json (or folder)")
    parser.add_argument("--method", default="lomo", choices=METHODS)
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--memory", type=float, default=80.0, help="GiB per GPU (default 80)")
    parser.add_argument(
        "--reserve",
        type=float,
        default=1.0,
        help="GiB per GPU the tensor census cannot see: CUDA context, NCCL, allocator "
        "fragmentation (default 1.0; scripts/gpu_acceptance.sh measures it)",
    )
    parser.add_argument("--seq", type=int, default=512, help="tokens per sequence")
    parser.add_argument("--batch", type=int, default=8, help="sequences per GPU")
    parser.add_argument("--dtype", default="fp16", choices=list(DTYPE_BYTES))
    parser.add_argument(
        "--activation-checkpointing", action=argparse.BooleanOptionalAction, default=True
    )
    parser.add_argument(
        "--attn",
        default="eager",
        choices=["eager", "sdpa"],
        help="eager keeps the attention scores (as the paper's LLaMA code); sdpa does not",
    )
    parser.add_argument(
        "--loss-chunk",
        type=int,
        help="tokens per chunk of a chunked cross-entropy (default: the full logits at once)",
    )
    parser.add_argument(
        "--deepspeed",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ZeRO-3 (default); --no-deepspeed: one process, or plain data parallelism",
    )
    parser.add_argument(
        "--deepspeed-config",
        default=str(ROOT / ZERO3_CONFIG),
        help="DeepSpeed JSON whose ZeRO-3 sizes (persistence threshold, prefetch bucket, "
        "sub-group) the plan uses (default: the repository's config/deepspeed/zero3.json)",
    )
    parser.add_argument("--lora-r", type=int, default=2)
    parser.add_argument("--task", default="rte", help="the task in the printed command")
    parser.add_argument("--out", default="runs/plan", help="the run folder in the printed command")
    parser.add_argument("--json", action="store_true", help="also print the verdict as JSON")
    parser.set_defaults(func=run_plan)


if __name__ == "__main__":  # `python -m lomo.measure.plan ARGS` is `lomo plan ARGS`
    from lomo.cli import main

    main(["plan", *sys.argv[1:]])
