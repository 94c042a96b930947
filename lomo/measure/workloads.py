"""Models and training steps shared by `lomo memory`, `lomo throughput` and `lomo plan`.

- `build_model`: a named model in a given dtype: `random-100m`, a LLaMA-1-shaped model with
  random weights and any number of layers (`llama-7b` ... `llama-65b`), or a
  `lomo.train.models` name.
- `make_step`: one full training step (forward, backward, update) of a method declared in
  `lomo.train.methods.METHODS` that trains the base weights without adapters (LOMO, AdaLomo,
  SGD, AdamW, or any new one), built and stepped as `lomo finetune` does, or of a `lomo-optim`
  original (`PEERS`); plus the optimizer object so memory can be attributed. The loss is the
  chunked linear + cross-entropy of `lomo.loss` (the training loss of `lomo finetune`), or
  Hugging Face's `model(...).loss` with `chunked_loss=False`.
- `MasterWeightOptimizer`: the mixed-precision recipe behind the paper's SGD and AdamW rows
  (low-precision model, fp32 master weights held by the optimizer).
"""

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_leaves

from lomo import argtypes
from lomo.train.methods import METHODS, PEERS, Method, Peer, measured_methods, optimizer_names


def declaration(name: str) -> Method:
    """The method measured as `name`; for a lomo-optim original, the method it is of."""
    if name in PEERS:
        return METHODS[PEERS[name].original_of]
    if name not in measured_methods():
        names = ", ".join(optimizer_names())
        raise ValueError(f"unknown optimizer {name!r}: expected one of {names}")
    return METHODS[name]


def display_name(name: str) -> str:
    if name in PEERS:
        return PEERS[name].display_name
    return declaration(name).display_name or name


def warmup_steps(name: str) -> int:
    """Steps before memory is counted: one for an optimizer whose state appears in it."""
    return 1 if declaration(name).state_in_first_step else 0


# LLaMA-1 shapes (Touvron et al., 2023): hidden size, attention heads, MLP size, layers.
LLAMA_SHAPES = {
    "llama-7b": (4096, 32, 11008, 32),
    "llama-13b": (5120, 40, 13824, 40),
    "llama-30b": (6656, 52, 17920, 60),
    "llama-65b": (8192, 64, 22016, 80),
}
LLAMA_VOCAB = 32000

# Later families' published sizes, as the fields of their Hugging Face config.json that memory
# depends on (lomo plan reads them as any config.json; `build_model` makes them with random
# weights at any depth). Llama-2 (meta-llama/Llama-2-*-hf), Llama-3 (meta-llama/Meta-Llama-3-*),
# Llama-3.2-1B, Qwen2.5 (Qwen/Qwen2.5-*; q, k and v have biases).
FAMILY_SIZES = {
    "llama2-7b": dict(model_type="llama", hidden_size=4096, intermediate_size=11008,
                      num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                      vocab_size=32000, tie_word_embeddings=False),
    "llama2-13b": dict(model_type="llama", hidden_size=5120, intermediate_size=13824,
                       num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=40,
                       vocab_size=32000, tie_word_embeddings=False),
    "llama2-70b": dict(model_type="llama", hidden_size=8192, intermediate_size=28672,
                       num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8,
                       vocab_size=32000, tie_word_embeddings=False),
    "llama3-8b": dict(model_type="llama", hidden_size=4096, intermediate_size=14336,
                      num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                      vocab_size=128256, tie_word_embeddings=False),
    "llama3-70b": dict(model_type="llama", hidden_size=8192, intermediate_size=28672,
                       num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8,
                       vocab_size=128256, tie_word_embeddings=False),
    "llama3.2-1b": dict(model_type="llama", hidden_size=2048, intermediate_size=8192,
                        num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                        vocab_size=128256, tie_word_embeddings=True),
    "qwen2.5-0.5b": dict(model_type="qwen2", hidden_size=896, intermediate_size=4864,
                         num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                         vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960,
                         num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                         vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-7b": dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944,
                       num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                       vocab_size=152064, tie_word_embeddings=False),
    "qwen2.5-14b": dict(model_type="qwen2", hidden_size=5120, intermediate_size=13824,
                        num_hidden_layers=48, num_attention_heads=40, num_key_value_heads=8,
                        vocab_size=152064, tie_word_embeddings=False),
}  # fmt: skip
# Models built with random weights at any depth (`--layers`, extrapolated to the full one).
SIZED_MODELS = (*LLAMA_SHAPES, *FAMILY_SIZES)


def full_depth(name: str) -> int:
    """The decoder layers of a model of SIZED_MODELS."""
    if name in LLAMA_SHAPES:
        return LLAMA_SHAPES[name][3]
    return FAMILY_SIZES[name]["num_hidden_layers"]


def random_llama_100m() -> nn.Module:
    """About 100M parameters in SmolLM2's shape family, random weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=640,
        intermediate_size=1728,
        num_hidden_layers=12,
        num_attention_heads=10,
        num_key_value_heads=5,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def llama_shaped(
    shape: str, num_layers: int, dtype: torch.dtype, attn_implementation: str = "eager"
) -> nn.Module:
    """A LLaMA-1-shaped causal LM with `num_layers` decoder layers and random weights.

    Built directly in `dtype`, so that no fp32 copy inflates the process's peak memory.
    """
    from transformers import AutoModelForCausalLM, LlamaConfig

    if shape not in LLAMA_SHAPES:
        raise ValueError(f"unknown shape {shape!r}: expected one of {', '.join(LLAMA_SHAPES)}")
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    hidden, heads, intermediate, _ = LLAMA_SHAPES[shape]
    config = LlamaConfig(
        vocab_size=LLAMA_VOCAB,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        attn_implementation=attn_implementation,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=dtype)


def family_sized(
    name: str, num_layers: int, dtype: torch.dtype, attn_implementation: str = "eager"
) -> nn.Module:
    """A model of FAMILY_SIZES with `num_layers` decoder layers and random weights, built
    directly in `dtype`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    fields = {**FAMILY_SIZES[name], "num_hidden_layers": num_layers}
    config = AutoConfig.for_model(**fields, attn_implementation=attn_implementation)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=dtype)


def check_model(name: str) -> None:
    """Stop on a model name no worker can build, before any worker starts."""
    from lomo.train.models import KNOWN_MODELS, resolve

    if name not in SIZED_MODELS and name != "random-100m" and name not in KNOWN_MODELS:
        resolve(name)


def build_model(
    name: str,
    dtype: torch.dtype,
    attn_implementation: str = "eager",
    num_layers: int | None = None,
) -> nn.Module:
    """`random-100m`, a size from LLAMA_SHAPES or FAMILY_SIZES, or a model name for
    `lomo.train.models`.

    `num_layers` is only meaningful for those sizes (default: the full depth).
    """
    if name in SIZED_MODELS:
        layers = num_layers if num_layers is not None else full_depth(name)
        if name in LLAMA_SHAPES:
            model = llama_shaped(name, layers, dtype, attn_implementation)
        else:
            model = family_sized(name, layers, dtype, attn_implementation)
    elif num_layers is not None:
        raise ValueError(f"num_layers can only be set for {', '.join(SIZED_MODELS)}, not {name!r}")
    elif name == "random-100m":
        model = random_llama_100m().to(dtype)
        model.config._attn_implementation = attn_implementation
    else:
        from lomo.train.models import load_model

        model = load_model(name, dtype=dtype, attn_implementation=attn_implementation)
    model.config.use_cache = False  # training: a KV cache would keep every layer's keys alive
    return model.train()


class MasterWeightOptimizer:
    """Mixed-precision training with a torch optimizer: fp32 master weights, low-precision model.

    The optimizer updates an fp32 copy of each parameter from the fp32-converted gradient, and
    the result is copied back into the fp16/bf16 weight. This is the recipe behind the paper's
    Table 1: SGD keeps 4 bytes (master) and AdamW 12 bytes (master + two moments) per parameter.
    Each parameter has its own copy of `optimizer` (its class and settings), so only one fp32
    gradient exists at a time.
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        (group,) = optimizer.param_groups
        settings = {key: value for key, value in group.items() if key != "params"}
        self.params = [p for p in group["params"] if p.requires_grad]
        if any(p.dtype == torch.float32 for p in self.params):
            raise ValueError("master weights are for fp16/bf16 parameters; use the optimizer as is")
        self.param_groups = [{**settings, "params": self.params}]  # what a step clips
        self.masters = [p.detach().float() for p in self.params]
        self.optimizers = [
            type(optimizer)([{**settings, "params": [master], "foreach": False}])
            for master in self.masters
        ]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        pairs = zip(self.params, self.masters, self.optimizers, strict=True)
        for param, master, optimizer in pairs:
            if param.grad is None:
                continue
            master.grad = param.grad.float()
            optimizer.step()
            master.grad = None
            param.copy_(master)

    def state_tensors(self) -> list[Tensor]:
        moments = [t for opt in self.optimizers for t in tree_leaves(opt.state)]
        return self.masters + [t for t in moments if isinstance(t, Tensor)]


def optimizer_state_tensors(optimizer: Any) -> list[Tensor]:
    """Every tensor an optimizer keeps between steps (master weights, moments, step counts)."""
    if isinstance(optimizer, MasterWeightOptimizer):
        return optimizer.state_tensors()
    holders: list[Any] = [optimizer.state]
    # lomo-optim's AdaLomo keeps its second moments in dicts outside `state`.
    holders += [
        getattr(optimizer, name, {}) for name in ("exp_avg_sq", "exp_avg_sq_row", "exp_avg_sq_col")
    ]
    return [t for t in tree_leaves(holders) if isinstance(t, Tensor)]


def make_step(
    name: str,
    clip: bool,
    model: nn.Module,
    tokens: Tensor,
    master_weights: bool = False,
    chunked_loss: bool = True,
) -> tuple[Callable[[], Any], Any]:
    """Build the optimizer; return a function that runs one full training step, and the optimizer.

    A method is built by its declared `optimizers` with its `measure_lr` and stepped by its
    declared `step`, as in `lomo finetune`. `master_weights=True` gives a torch optimizer
    (SGD, AdamW) fp32 master weights (`MasterWeightOptimizer`) when the model is fp16/bf16;
    LOMO and AdaLomo always update in fp32 on their own. `clip`: by global norm 1.0.
    `chunked_loss=False`: the loss is `model(...).loss` (whole-batch logits).
    """
    from lomo.loss import causal_lm_loss
    from lomo.train.config import FinetuneConfig
    from lomo.train.runtime import Runtime

    def loss_fn() -> Tensor:
        return causal_lm_loss(model, tokens, None, tokens, chunked=chunked_loss)

    method = declaration(name)
    if name in PEERS:
        return lomo_optim_step(PEERS[name], method.measure_lr, clip, model, loss_fn)
    # The optimizer's settings only: the model, its dtype and the batch are the measurement's.
    config = FinetuneConfig(
        method=name, lr=method.measure_lr, clip_mode="norm" if clip else "none", clip_value=1.0
    )
    (optimizer,) = method.optimizers(config, model, None)
    low_precision = next(model.parameters()).dtype != torch.float32
    if master_weights and low_precision and not method.fused:
        optimizer = MasterWeightOptimizer(optimizer)
    runtime = Runtime("single", tokens.device)

    def step() -> None:
        method.step(config, [optimizer], [loss_fn], runtime)

    return step, optimizer


def lomo_optim_step(
    peer: Peer, lr: float, clip: bool, model: nn.Module, loss_fn: Callable[[], Tensor]
) -> tuple[Callable[[], Any], Any]:
    """lomo-optim's optimizer and its step as the official trainer runs it."""
    import lomo_optim

    if not torch.cuda.is_available():  # lomo-optim's AdaLomo calls .cuda() on its state
        torch.Tensor.cuda = lambda self, *args, **kwargs: self
    opt = getattr(lomo_optim, peer.cls)(model, lr=lr, clip_grad_norm=1.0 if clip else None)

    def step() -> None:
        loss = loss_fn()  # one forward; grad_norm keeps the graph, as the official trainer
        if clip:
            opt.grad_norm(loss)
        opt.fused_backward(loss, lr)

    return step, opt


def run_worker_process(module: str, spec: dict, env: dict[str, str] | None = None) -> dict:
    """Run `python -m module --worker SPEC` in a fresh process (with `env` added to this
    process's environment); return its last JSON line.

    A fresh process per configuration: no allocator cache, optimizer hook or peak shared.
    """
    command = [sys.executable, "-m", module, "--worker", json.dumps(spec)]
    environment = {**os.environ, **(env or {})}
    done = subprocess.run(command, capture_output=True, text=True, env=environment)
    if done.returncode != 0:
        raise RuntimeError(f"{module} worker failed for {spec}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def add_workload_arguments(
    parser: argparse.ArgumentParser, attn: str, seq: int, batch: int, clip: bool
) -> None:
    """The flags that name a measured workload, shared by `lomo memory` and `lomo throughput`
    (each with its table's defaults: Table 1 measured eager attention at 512 x 8 without
    clipping, Table 2 trained at 1024 x 1 with clipping)."""
    from lomo.train.models import DTYPES

    parser.add_argument(
        "--model",
        default="llama-7b",
        help=f"{', '.join(SIZED_MODELS)}, random-100m, or a lomo.train.models name (a folder)",
    )
    parser.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    parser.add_argument(
        "--attn",
        default=attn,
        choices=["eager", "sdpa"],
        help="attention implementation (eager materialises the score matrix)",
    )
    parser.add_argument("--seq", type=argtypes.positive_int, default=seq)
    parser.add_argument("--batch", type=argtypes.positive_int, default=batch)
    parser.add_argument(
        "--clip",
        action=argparse.BooleanOptionalAction,
        default=clip,
        help="clip by global norm 1.0, as the paper (LOMO: an extra backward pass)",
    )
    parser.add_argument(
        "--chunked-loss",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="chunked linear + cross-entropy (lomo.loss); --no-chunked-loss: model(...).loss",
    )
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"]
    )
