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
import dataclasses
import json
import math
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from lomo import argtypes
from lomo.measure.workloads import FAMILY_SIZES, LLAMA_SHAPES, LLAMA_VOCAB
from lomo.train.config import FinetuneConfig
from lomo.train.methods import METHODS

ROOT = Path(__file__).resolve().parents[2]
ZERO3_CONFIG = "config/deepspeed/zero3.json"  # relative to the repository root
GIB = 2**30
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
# update inside backward: at most one gradient alive
FUSED = tuple(name for name, method in METHODS.items() if method.fused)
LORA = tuple(name for name, method in METHODS.items() if method.lora)
HUB_NAMES = {name: f"huggyllama/{name}" for name in LLAMA_SHAPES}  # as in config/paper.yaml
HUB_NAMES |= {
    "llama2-7b": "meta-llama/Llama-2-7b-hf",
    "llama2-13b": "meta-llama/Llama-2-13b-hf",
    "llama2-70b": "meta-llama/Llama-2-70b-hf",
    "llama3-8b": "meta-llama/Meta-Llama-3-8B",
    "llama3-70b": "meta-llama/Meta-Llama-3-70B",
    "llama3.2-1b": "meta-llama/Llama-3.2-1B",
    "qwen2.5-0.5b": "Qwen/Qwen2.5-0.5B",
    "qwen2.5-1.5b": "Qwen/Qwen2.5-1.5B",
    "qwen2.5-7b": "Qwen/Qwen2.5-7B",
    "qwen2.5-14b": "Qwen/Qwen2.5-14B",
}
# The `model_type`s whose decoder the formulas below describe: LLaMA's, with the differences a
# Shape records (head_dim, biases, norms per layer, tied embeddings). All have the gated MLP
# (SwiGLU, Gemma-2's GeGLU; Phi-3 fuses gate and up into one matrix of the same size) and
# rotary positions. Any other family is refused: its memory is not LLaMA's.
MODEL_TYPES = ("llama", "mistral", "qwen2", "gemma2", "phi3", "granite")
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
# Evaluation (lomo.train.evaluate's scorer): the key/value cache of a batch of prompts, the
# copies of it that the candidates' answer tokens run on, the forward's temporaries and logits.
EVAL_COMPONENTS = (
    "parameters",
    "gathered",
    "prompt_cache",
    "answer_cache",
    "temporaries",
    "logits",
)
# Built-in shapes of the models the workflow's profiles run besides LLaMA (lomo.train.models):
# tiny-llama borrows SmolLM2's tokenizer (49152 tokens); SmolLM2-135M's published config.
NAMED_SHAPES = {
    "tiny-llama": ("tiny-llama", 64, 128, 2, 4, 4, 49152, False),
    "smollm2-135m": ("smollm2-135m", 576, 1536, 30, 9, 3, 49152, True),
}


@dataclass(frozen=True)
class Shape:
    """The dimensions of a decoder of MODEL_TYPES that memory depends on (read from a Hugging
    Face config by `shape_from_config`); the defaults are LLaMA-1's."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool = False
    model_type: str = "llama"
    head_dim: int | None = None  # None: hidden // heads (Gemma-2 sets its own)
    qkv_bias: bool = False  # Qwen2; LLaMA/Granite's attention_bias (o_proj too)
    o_bias: bool = False
    mlp_bias: bool = False  # LLaMA/Granite's mlp_bias
    norms_per_layer: int = 2  # Gemma-2: 4 (before and after attention and MLP)
    fused_projections: bool = False  # Phi-3: one qkv_proj and one gate_up_proj matrix
    attn_softcapping: bool = False  # Gemma-2: tanh-capped attention scores (eager)
    final_softcapping: bool = False  # Gemma-2: tanh-capped logits

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def q_width(self) -> int:
        return self.heads * self.head_size

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_size


def shape_from_config(name: str, fields: dict) -> Shape:
    """The Shape of a Hugging Face config (config.json's fields); one-line refusal for a
    `model_type` outside MODEL_TYPES or a config without a decoder's sizes. A config without
    `model_type` (written by hand) is read as LLaMA's."""
    from transformers import AutoConfig

    model_type = fields.get("model_type", "llama")
    if model_type not in MODEL_TYPES:
        raise ValueError(
            f"{name}: model_type {model_type!r} has no memory formulas in lomo plan "
            f"(it plans {', '.join(MODEL_TYPES)})"
        )
    required = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    missing = [key for key in (*required, "vocab_size") if key not in fields]
    if missing:
        raise ValueError(f"{name}: no {missing[0]!r} (not a LLaMA-style config)")
    # The family's config class fills what the file leaves to its defaults (Gemma-2 ties its
    # embeddings and sets head_dim 256 unless told otherwise).
    config = AutoConfig.for_model(**{**fields, "model_type": model_type})
    attention_bias = bool(getattr(config, "attention_bias", False))
    return Shape(
        name=name,
        hidden=config.hidden_size,
        intermediate=config.intermediate_size,
        layers=config.num_hidden_layers,
        heads=config.num_attention_heads,
        kv_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
        vocab=config.vocab_size,
        tied=bool(config.tie_word_embeddings),
        model_type=model_type,
        head_dim=getattr(config, "head_dim", None),
        qkv_bias=model_type == "qwen2" or attention_bias,
        o_bias=attention_bias,
        mlp_bias=bool(getattr(config, "mlp_bias", False)),
        norms_per_layer=4 if model_type == "gemma2" else 2,
        fused_projections=model_type == "phi3",
        attn_softcapping=getattr(config, "attn_logit_softcapping", None) is not None,
        final_softcapping=getattr(config, "final_logit_softcapping", None) is not None,
    )


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
    # lomo finetune's chunked loss (lomo.loss): its own chunk size where loss_chunk is None,
    # and full logits where lomo finetune falls back to them (LoRA's frozen ZeRO-3 head)
    chunked_loss: bool = False
    lora_r: int = 2
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    deepspeed: bool = True  # ZeRO-3 (False: one process, or plain data parallelism)
    persistence_threshold: int = 100_000  # zero_optimization.stage3_param_persistence_threshold
    prefetch_bucket: int = 50_000_000  # zero_optimization.stage3_prefetch_bucket_size
    sub_group_size: int = 1_000_000_000  # zero_optimization.sub_group_size (DeepSpeed default)
    # Evaluation, as lomo finetune's scorer runs it (FinetuneConfig's eval_batch / eval_tokens):
    # at most eval_batch prompts and eval_tokens cached tokens per forward (None: no bound).
    eval_batch: int = 16
    eval_tokens: int | None = None
    eval_prompt: int | None = None  # tokens of the longest prompt (None: seq, the truncation)
    eval_candidates: int = 2  # candidates per prompt
    eval_answer: int = 2  # tokens of the longest candidate (one word + the scored EOS)


def load_shape(size: str) -> Shape:
    """`7b` / `llama-7b` / `huggyllama/llama-7b` (LLaMA-1 shapes), a size of another family
    (`llama2-7b`, `llama3-8b`, `qwen2.5-7b`, ... or its hub id), `tiny-llama`, `smollm2-135m`,
    or a Hugging Face config.json (file or folder)."""
    if size in NAMED_SHAPES:
        return Shape(*NAMED_SHAPES[size])
    size = {hub: name for name, hub in HUB_NAMES.items()}.get(size, size)
    if size.lower() in FAMILY_SIZES:
        return shape_from_config(size.lower(), FAMILY_SIZES[size.lower()])
    key = size.lower() if size.lower().startswith("llama-") else f"llama-{size.lower()}"
    if key in LLAMA_SHAPES:
        hidden, heads, intermediate, layers = LLAMA_SHAPES[key]
        return Shape(key, hidden, intermediate, layers, heads, heads, LLAMA_VOCAB)
    path = Path(size)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        sizes = ", ".join(name.removeprefix("llama-") for name in LLAMA_SHAPES)
        raise ValueError(
            f"unknown size {size!r}: expected one of {sizes}, {', '.join(FAMILY_SIZES)} "
            "or a config.json path"
        )
    name = str(path.parent if path.name == "config.json" else path)
    return shape_from_config(name, json.loads(path.read_text()))


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
    h, i, q, kv = shape.hidden, shape.intermediate, shape.q_width, shape.kv_width
    sizes = {"embed": shape.vocab * h, "final_norm": h}
    if not shape.tied:
        sizes["lm_head"] = shape.vocab * h
    if shape.fused_projections:
        sizes.update({"layer.qkv": h * (q + 2 * kv), "layer.gate_up": 2 * h * i})
    else:
        sizes.update({"layer.q": h * q, "layer.k": h * kv, "layer.v": h * kv})
        sizes.update({"layer.gate": h * i, "layer.up": h * i})
    sizes.update({"layer.o": q * h, "layer.down": i * h})
    sizes.update({f"layer.norm{k}": h for k in range(1, shape.norms_per_layer + 1)})
    if shape.qkv_bias:
        sizes.update({"layer.q_bias": q, "layer.k_bias": kv, "layer.v_bias": kv})
    if shape.o_bias:
        sizes["layer.o_bias"] = h
    if shape.mlp_bias:
        sizes.update({"layer.gate_bias": i, "layer.up_bias": i, "layer.down_bias": h})
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
    norms = shape.norms_per_layer * (4 * h + p * h)
    per_token = norms + p * (4 * shape.q_width + 2 * shape.kv_width) + 4 * p * i + 8
    if setting.attn == "eager":
        per_token += shape.heads * setting.seq * (4 + (p if p != 4 else 0))
        if shape.attn_softcapping:  # tanh keeps its output (census: p per score)
            per_token += shape.heads * setting.seq * p
    else:
        per_token += 4 * shape.heads
    return per_token * setting.seq * setting.batch


def uses_zero3(setting: Setting) -> bool:
    """ZeRO-3 for LOMO/AdaLomo/LoRA with --deepspeed (the paper profile launches them so, also
    on one GPU); for SGD/AdamW on several GPUs (DeepSpeed's optimizer partitions gradients and
    states). Without it every GPU holds the whole model: the one-GPU footprint."""
    return setting.deepspeed and (METHODS[setting.method].zero3 or setting.gpus > 1)


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
    for name in ("eval_batch", "eval_candidates", "eval_answer"):
        if getattr(setting, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(setting, name)}")
    for name in ("eval_tokens", "eval_prompt"):
        if getattr(setting, name) is not None and getattr(setting, name) < 1:
            raise ValueError(f"{name} must be >= 1 (or unset), got {getattr(setting, name)}")


def lora_parameter_count(shape: Shape, setting: Setting, sizes: dict[str, int]) -> int:
    """LoRA adapters: r x (in + out) per targeted matrix per layer."""
    h, i = shape.hidden, shape.intermediate
    widths = {"q_proj": (h, shape.q_width), "k_proj": (h, shape.kv_width)}
    widths |= {"v_proj": widths["k_proj"], "o_proj": (shape.q_width, h)}
    widths |= {"gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
    if shape.fused_projections:  # Phi-3's module names
        widths |= {"qkv_proj": (h, shape.q_width + 2 * shape.kv_width), "gate_up_proj": (h, 2 * i)}
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
    if setting.method in LORA:
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
    setting = dataclasses.replace(setting, loss_chunk=loss_chunk_tokens(shape, setting))
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
    lora_params = lora_parameter_count(shape, setting, sizes) if setting.method in LORA else 0
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
    # configs with a vocabulary too small for the loss to be the peak), h more per extra norm.
    act_grads = p * (i + shape.norms_per_layer * h) * tokens

    # Logits of the loss (transformers: logits in the dtype, upcast to fp32, log-softmax): at
    # the start of backward the saved fp32 log-softmax output, its gradient and the gradient of
    # its input are alive, 12 bytes per logit (census at 7B: 4 under activations, 8 other);
    # under ZeRO-3 DeepSpeed's module hooks keep the lm_head output (p more). In the head's
    # backward the fp32 logit gradient and its cast to the dtype remain (4 + p, 4 in fp32).
    # A chunked cross-entropy holds one chunk of logits at a time, plus the fp32 gradient of
    # the hidden states of the whole batch, accumulated chunk by chunk. Soft-capped logits
    # (Gemma-2): tanh keeps its output, p more per logit (census).
    logit_tokens = tokens if setting.loss_chunk is None else min(setting.loss_chunk, tokens)
    loss_bytes_per_logit = 12 + (p if zero3 and setting.loss_chunk is None else 0)
    loss_bytes_per_logit += p * shape.final_softcapping
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
        if setting.method in ("lomo", "lora+lomo"):
            return (4 if p < 4 else 0) * math.ceil(n / shard)
        if setting.method == "adalomo":
            return 4 * n + (4 if p < 4 else 0) * math.ceil(n / shard)
        if setting.method in ("sgd", "adamw"):
            return 4 * math.ceil(n / shard)
        return 0

    trainable = METHODS[setting.method].trains_base  # lora: the adapters (counted above)
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
    if setting.method == "zero-shot":  # evaluation only
        phases = {"resident": {**zero, **resident_parts, "gathered": gathered_forward}}
    totals = {name: sum(parts.values()) for name, parts in phases.items()}
    peak_phase = max(totals, key=totals.get)
    largest_gradient = max(head_matrix, largest_layer_matrix) * p if trainable else 0
    # Evaluation: the weights as in training's forward (under ZeRO-3 the module that runs is
    # gathered whole, the LM head the largest, plus the prefetch bucket).
    gathered_eval = 0
    if zero3:
        largest_gathered = max(head_matrix, largest_layer_matrix)
        gathered_eval = max(
            gathered_forward, (largest_gathered + min(setting.prefetch_bucket, partitioned)) * p
        )
    evaluation = evaluation_plan(shape, setting, resident, gathered_eval)
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
        "evaluation": evaluation,
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
    if "norm" in name or name.endswith("_bias"):
        return numel
    h = shape.hidden
    if name in ("embed", "lm_head"):
        return shape.vocab + h
    if name in ("layer.gate", "layer.up", "layer.down"):
        return shape.intermediate + h
    return h + numel // h


def loss_chunk_tokens(shape: Shape, setting: Setting) -> int | None:
    """Tokens per chunk of the training loss, None for full logits: an explicit `loss_chunk`;
    else, with `chunked_loss`, lomo finetune's choice (lomo.train.finetune.batch_loss): full
    logits for LoRA on a ZeRO-3 partitioned (frozen) head or with dropout on an `lm_head`
    adapter, otherwise lomo.loss's default chunk for the batch's tokens (every token labelled:
    the most a batch can hold)."""
    if setting.loss_chunk is not None or not setting.chunked_loss:
        return setting.loss_chunk
    if setting.method == "lora" and uses_zero3(setting):
        return None  # frozen_partitioned_head: lomo finetune computes model(...).loss
    if setting.method in LORA and "lm_head" in setting.lora_targets:
        return None  # lora_dropout on the head (the default 0.05) disables the chunks
    from lomo.loss import default_chunk_tokens

    return default_chunk_tokens(setting.seq * setting.batch, shape.hidden, shape.vocab)


def eval_batches(setting: Setting, width: int | None = None) -> dict[str, int]:
    """The scorer's batches for prompts of `width` tokens (default: the longest, `eval_prompt`
    or `seq`) with `eval_candidates` candidates of `eval_answer` tokens each
    (lomo.train.evaluate.cut_batches): `prompts` prompts per forward (at most eval_batch, and
    eval_tokens // width, at least one), and `answers` candidates per answer forward (at most
    4 x eval_batch, those of a batch, and eval_tokens // (width + steps)); `width`, `steps`
    (answer tokens run on the cache)."""
    width = width or setting.eval_prompt or setting.seq
    steps = setting.eval_answer - 1
    budget = setting.eval_tokens
    prompts = setting.eval_batch
    if budget is not None:
        prompts = min(prompts, max(1, budget // width))
    answers = 0
    if steps:
        answers = min(4 * setting.eval_batch, prompts * setting.eval_candidates)
        if budget is not None:
            answers = min(answers, max(1, budget // (width + steps)))
    return {"prompts": prompts, "answers": answers, "width": width, "steps": steps}


def kv_bytes_per_token(shape: Shape, setting: Setting) -> int:
    """Keys and values of one cached token, all layers."""
    return 2 * shape.layers * shape.kv_width * DTYPE_BYTES[setting.dtype]


def eval_widths(setting: Setting) -> list[int]:
    """Prompt widths to plan the evaluation at: the longest prompt, and under a token budget
    every shorter width that fills it (budget // k prompts, or k candidates, per forward),
    where more rows of shorter prompts can hold more than the longest ones."""
    longest = setting.eval_prompt or setting.seq
    widths = {longest}
    if setting.eval_tokens is not None:
        steps = setting.eval_answer - 1
        for k in range(1, 4 * setting.eval_batch + 1):
            widths |= {setting.eval_tokens // k, setting.eval_tokens // k - steps}
    return sorted(w for w in widths if 1 <= w <= longest)


def evaluation_plan(shape: Shape, setting: Setting, resident: int, gathered: int) -> dict:
    """The evaluation's per-GPU peak: `evaluation_at` the prompt width that needs the most
    (`eval_widths`)."""
    plans = [evaluation_at(shape, setting, resident, gathered, w) for w in eval_widths(setting)]
    return max(plans, key=lambda result: result["peak"])


def evaluation_at(shape: Shape, setting: Setting, resident: int, gathered: int, width: int) -> dict:
    """The evaluation's per-GPU peak, as lomo.train.evaluate scores: two moments of a batch.

    - prompts: the last layer of the prompts' forward. The batch's key/value cache (rows x
      width, every layer), and the layer's temporaries: per token p (4h + 3I) (the hidden
      states, the MLP's three I-wide tensors) and the rotary cos/sin (2 x head_dim x p);
      eager attention adds its mask (p per score of a row) and the scores it returns (p per
      score and head, alive through the MLP) or, in the attention itself, its masked scores
      and their fp32 softmax (8 bytes per score in fp32; p + 8 in fp16/bf16, whose upcast
      copy the CPU census sees) and, with grouped-query attention, the keys and values
      repeated to every head. Then the logits of one position per prompt (p, and the fp32
      log-softmax: p + 8 bytes per logit).
    - answers: a forward of candidates on copies of their prompts' caches, the batch's cache
      still alive: building the copies (the chunk's cache plus one layer taken twice), or the
      forward itself (the cache grown by the answer steps; in the last layer half a layer's
      old copy and the steps' temporaries, at its end the steps' logits, p bytes each).
    Census check: small random LLaMA configs on CPU (tests/test_plan.py; table in
    paper/tables/plan_validation.md)."""
    p = DTYPE_BYTES[setting.dtype]
    h, i, vocab, layers = shape.hidden, shape.intermediate, shape.vocab, shape.layers
    batches = eval_batches(setting, width)
    rows, width, steps, answers = (batches[k] for k in ("prompts", "width", "steps", "answers"))
    per_token = kv_bytes_per_token(shape, setting)
    prompt_cache = per_token * rows * width
    layer_temps = p * (4 * h + 3 * i) + 2 * shape.head_size * p
    tokens = rows * width
    scores = rows * shape.heads * width * width
    mask = rows * width * width * p
    if setting.attn == "eager":
        mlp = tokens * layer_temps + mask + p * scores
        # the scores with the mask added, their fp32 softmax, and in fp16/bf16 the fp32 upcast;
        # grouped-query attention repeats the keys and values to every head
        repeated = 2 * p * h if shape.kv_heads < shape.heads else 0
        attention = tokens * (p * 4 * h + 2 * shape.head_size * p + repeated) + mask
        attention += (p + (8 if p < 4 else 4)) * scores
        temporaries = max(mlp, attention)
    else:
        temporaries = tokens * layer_temps
    resident_parts = {"parameters": resident, "gathered": gathered}
    zero = dict.fromkeys(EVAL_COMPONENTS, 0)
    phases = {
        "eval prompts": {
            **zero,
            **resident_parts,
            "prompt_cache": prompt_cache,
            "temporaries": temporaries,
            "logits": rows * vocab * (p + 8),
        }
    }
    if answers:
        copies = per_token * answers * width
        building = copies + copies // layers
        grown = per_token * answers * (width + steps)
        # inside the last layer (half a layer still held twice), or at the end with the logits
        inside = {"answer_cache": grown + copies // (2 * layers)}
        inside["temporaries"] = answers * steps * layer_temps
        end = {"answer_cache": grown, "logits": answers * steps * vocab * p}
        answer_parts = max(
            [{"answer_cache": building}, inside, end], key=lambda parts: sum(parts.values())
        )
        phases["eval answers"] = {
            **zero,
            **resident_parts,
            "prompt_cache": prompt_cache,
            **answer_parts,
        }
    totals = {name: sum(parts.values()) for name, parts in phases.items()}
    peak_phase = max(totals, key=totals.get)
    return {
        "batches": batches,
        "phases": phases,
        "totals": totals,
        "peak_phase": peak_phase,
        "peak": totals[peak_phase],
        "kv_bytes_per_token": per_token,
    }


def eval_token_cap(setting: Setting) -> int:
    """The smallest eval_tokens at which the budget no longer binds (eval_batch decides)."""
    unbounded = eval_batches(dataclasses.replace(setting, eval_tokens=None))
    width, steps = unbounded["width"], unbounded["steps"]
    return max(unbounded["prompts"] * width, unbounded["answers"] * (width + steps))


def largest_fitting_eval_tokens(shape: Shape, setting: Setting, limit: int) -> int | None:
    """The largest eval_tokens whose evaluation peak is at most `limit` bytes (up to the cap,
    where the budget stops binding), or None if not even one prompt at a time fits."""

    def fits(tokens: int) -> bool:
        trial = dataclasses.replace(setting, eval_tokens=tokens)
        return plan(shape, trial)["evaluation"]["peak"] <= limit

    low, high = 1, eval_token_cap(setting)
    if not fits(low):
        return None
    if fits(high):
        return high
    while high - low > 1:  # fits(low), not fits(high): the peak grows with the budget
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def largest_fitting_batch(shape: Shape, setting: Setting, limit: int) -> int | None:
    """The largest micro batch per GPU (at most the setting's) whose training peak is at most
    `limit` bytes, or None if not even one sequence fits."""
    for batch in range(setting.batch, 0, -1):
        if plan(shape, dataclasses.replace(setting, batch=batch))["peak"] <= limit:
            return batch
    return None


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
    if zero3 and not METHODS[setting.method].zero3:
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
    flags.insert(-1, f"--eval-batch={setting.eval_batch}")
    if setting.eval_tokens is not None:
        flags.insert(-1, f"--eval-tokens={setting.eval_tokens}")
    if not setting.chunked_loss and setting.method != "zero-shot":
        flags.insert(-1, "--no-chunked-loss")  # lomo finetune's default is the chunked loss
    if setting.method in LORA:
        flags += [f"--lora-r={setting.lora_r}", "--lora-targets", *setting.lora_targets]
    if zero3:
        flags.append(f"--deepspeed={ZERO3_CONFIG}")
    if zero3 or setting.gpus > 1:
        launcher = ["python", "-m", "torch.distributed.run", f"--nproc_per_node={setting.gpus}"]
        return [*launcher, "-m", "lomo.cli", *flags]
    return ["lomo", *flags]


def fit_check(result: dict, memory_gb: float, reserve_gb: float) -> tuple[bool, str]:
    """(fits, one line): whether training and evaluation fit `memory_gb` GiB per GPU after
    `reserve_gb`, and where not, the largest micro batch / eval_tokens that fits."""
    shape, setting, evaluation = result["shape"], result["setting"], result["evaluation"]
    limit = int((memory_gb - reserve_gb) * GIB)
    problems = []
    if result["peak"] > limit and setting.method != "zero-shot":  # zero-shot: evaluation only
        batch = largest_fitting_batch(shape, setting, limit)
        fix = (
            f"largest micro batch that fits: {batch} per GPU (micro_batch {batch * setting.gpus})"
            if batch
            else "not even one sequence per GPU fits: more GPUs, or a shorter max_length"
        )
        problems.append(
            f"training needs {result['peak'] / GIB + reserve_gb:.2f} GiB (at the "
            f"{result['peak_phase']}, batch {setting.batch} x {setting.seq} per GPU); {fix}"
        )
    if evaluation["peak"] > limit:
        tokens = largest_fitting_eval_tokens(shape, setting, limit)
        fix = (
            f"largest eval_tokens that fits: {tokens}"
            if tokens
            else "not even one prompt at a time fits: more GPUs, or a shorter max_length"
        )
        budget = setting.eval_tokens if setting.eval_tokens is not None else "none"
        problems.append(
            f"evaluation needs {evaluation['peak'] / GIB + reserve_gb:.2f} GiB (eval_batch "
            f"{setting.eval_batch}, eval_tokens {budget}, prompts of "
            f"{evaluation['batches']['width']} tokens); {fix}"
        )
    where = f"{shape.name}, {setting.method} on {setting.gpus} GPU(s)"
    if not problems:
        return True, f"{where}: fits in {memory_gb:g} GiB per GPU"
    return False, f"{where} does not fit in {memory_gb:g} GiB per GPU: " + "; ".join(problems)


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
    evaluation = result["evaluation"]
    batches = evaluation["batches"]
    budget = setting.eval_tokens if setting.eval_tokens is not None else "none"
    lines += [
        "",
        f"evaluation (eval_batch {setting.eval_batch}, eval_tokens {budget}): prompts of "
        f"{batches['width']} tokens, {batches['prompts']} per forward; "
        + (
            f"{batches['answers']} candidates of {batches['steps'] + 1} tokens per answer forward"
            if batches["answers"]
            else "one-token answers (no answer forward)"
        )
        + f"; KV cache {evaluation['kv_bytes_per_token'] / 2**20:.3f} MiB per token",
        f"{'GiB per GPU':20}" + "".join(f"{name:>16}" for name in evaluation["phases"]),
    ]
    for component in EVAL_COMPONENTS:
        values = [parts[component] / GIB for parts in evaluation["phases"].values()]
        lines.append(f"{component:20}" + "".join(f"{v:16.3f}" for v in values))
    totals = evaluation["totals"].values()
    lines.append(f"{'total':20}" + "".join(f"{t / GIB:16.3f}" for t in totals))
    peak = max(result["peak"], evaluation["peak"])
    where = peak_phase if result["peak"] >= evaluation["peak"] else evaluation["peak_phase"]
    needed = peak / GIB + reserve_gb
    verdict = "fits" if needed <= memory_gb else "does NOT fit"
    lines += [
        "",
        f"peak {peak / GIB:.2f} GiB (at the {where}) + reserve {reserve_gb:.2f} "
        f"GiB = {needed:.2f} GiB: {verdict} in {memory_gb:g} GiB per GPU",
    ]
    fits, message = fit_check(result, memory_gb, reserve_gb)
    if not fits:
        lines.append(message)
    if command is None:
        lines.append(
            f"lomo finetune runs {setting.method} without ZeRO-3 (one process or plain data "
            "parallelism: --no-deepspeed plans that); this plan is DeepSpeed's own ZeRO-3 "
            "optimizer"
        )
    else:
        lines += ["run:", "  " + shlex.join(command)]
    return "\n".join(lines)


def eval_tokens_arg(text: str) -> int | str | None:
    """--eval-tokens: a number, `none` (no bound) or `auto` (the largest that fits)."""
    if text in ("auto", "none"):
        return None if text == "none" else text
    try:
        return argtypes.positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer, auto or none, got {text!r}"
        ) from None


def run_plan(args: argparse.Namespace) -> None:
    shape = load_shape(args.size)
    zero3 = zero3_settings(args.deepspeed_config)
    auto = args.eval_tokens == "auto"
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
        chunked_loss=args.chunked_loss or args.loss_chunk is not None,
        lora_r=args.lora_r,
        deepspeed=args.deepspeed,
        eval_batch=args.eval_batch,
        eval_tokens=None if auto else args.eval_tokens,
        eval_prompt=args.eval_prompt,
        eval_candidates=args.eval_candidates,
        eval_answer=args.eval_answer,
    )
    if args.memory <= 0 or args.reserve < 0:
        raise ValueError(f"need --memory > 0 and --reserve >= 0, got {args.memory}, {args.reserve}")
    check_setting(setting)
    if auto:  # the largest budget that fits (1, the least, where none does)
        limit = int((args.memory - args.reserve) * GIB)
        tokens = largest_fitting_eval_tokens(shape, setting, limit)
        setting = dataclasses.replace(setting, eval_tokens=tokens or 1)
    result = plan(shape, setting)
    command = finetune_command(shape, setting, args.task, args.out)
    print(format_plan(result, args.memory, args.reserve, command))
    fits, message = fit_check(result, args.memory, args.reserve)
    if args.json:
        evaluation = result["evaluation"]
        print(
            json.dumps(
                {
                    "peak_gib": result["peak"] / GIB,
                    "fits": fits,
                    "phase": result["peak_phase"],
                    "eval_peak_gib": evaluation["peak"] / GIB,
                    "eval_phase": evaluation["peak_phase"],
                    "eval_tokens": setting.eval_tokens,
                }
            )
        )
    if args.check and not fits:
        raise ValueError(message)


def add_parser(subparsers: argparse._SubParsersAction, summary: str) -> None:
    parser = subparsers.add_parser(
        "plan",
        help=summary,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("size", help="7b, 13b, 30b, 65b, or a Hugging Face config.json (or folder)")
    parser.add_argument("--method", default="lomo", choices=METHODS)
    parser.add_argument("--gpus", type=argtypes.positive_int, default=1)
    parser.add_argument(
        "--memory", type=argtypes.positive_float, default=80.0, help="GiB per GPU (default 80)"
    )
    parser.add_argument(
        "--reserve",
        type=argtypes.nonnegative_float,
        default=1.0,
        help="GiB per GPU the tensor census cannot see: CUDA context, NCCL, allocator "
        "fragmentation (default 1.0; scripts/gpu_acceptance.sh measures it)",
    )
    parser.add_argument(
        "--seq", type=argtypes.positive_int, default=512, help="tokens per sequence"
    )
    parser.add_argument("--batch", type=argtypes.positive_int, default=8, help="sequences per GPU")
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
        "--chunked-loss",
        action=argparse.BooleanOptionalAction,
        default=FinetuneConfig.chunked_loss,
        help="lomo finetune's chunked loss (its default, and so this one; lomo.loss's chunk "
        "size); --no-chunked-loss: the full logits at once",
    )
    parser.add_argument(
        "--loss-chunk",
        type=argtypes.positive_int,
        help="tokens per chunk of the chunked loss (what-if)",
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
    parser.add_argument("--lora-r", type=argtypes.positive_int, default=FinetuneConfig.lora_r)
    parser.add_argument(
        "--eval-batch",
        type=argtypes.positive_int,
        default=FinetuneConfig.eval_batch,
        help="prompts per evaluation forward, at most (lomo finetune's eval_batch)",
    )
    parser.add_argument(
        "--eval-tokens",
        type=eval_tokens_arg,
        default="auto",
        help="cached tokens per evaluation forward, at most (lomo finetune's eval_tokens); "
        "auto (default): the largest that fits, printed in the command; none: no bound",
    )
    parser.add_argument(
        "--eval-prompt",
        type=argtypes.positive_int,
        help="tokens of the longest prompt (default: --seq)",
    )
    parser.add_argument(
        "--eval-candidates", type=argtypes.positive_int, default=2, help="candidates per prompt"
    )
    parser.add_argument(
        "--eval-answer",
        type=argtypes.positive_int,
        default=2,
        help="tokens of the longest candidate, EOS included (default 2: a word and the EOS "
        "that the paper's template scores)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 with one line (the largest micro batch / eval_tokens that fits) where the "
        "run does not fit",
    )
    parser.add_argument("--task", default="rte", help="the task in the printed command")
    parser.add_argument("--out", default="runs/plan", help="the run folder in the printed command")
    parser.add_argument("--json", action="store_true", help="also print the verdict as JSON")
    parser.set_defaults(func=run_plan)


if __name__ == "__main__":  # `python -m lomo.measure.plan ARGS` is `lomo plan ARGS`
    import runpy

    sys.argv[1:1] = ["plan"]
    runpy.run_module("lomo.cli", run_name="__main__")
