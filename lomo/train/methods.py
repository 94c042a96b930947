"""The fine-tuning methods, each declared once: what it trains, which optimizers it builds, how
one training step runs, and where it runs. `lomo finetune` and its config checks, the
workflow's schema, `lomo plan`, `lomo budget`, `lomo memory` / `lomo throughput` and the
analysis rules read these declarations; adding a method is adding one `Method` to `METHODS`
(README, "Extending").

torch is imported inside the functions: the Snakemake workflow reads the names and flags when
it parses, without torch (lomo.train.config).
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from lomo.optim import FusedOptimizer
    from lomo.sync import GradSync
    from lomo.train.config import FinetuneConfig
    from lomo.train.runtime import Runtime

# (config, model, sync) -> the method's optimizers; `sync`: how a fused optimizer sums
# gradients over processes (lomo.sync).
BuildOptimizers = Callable[["FinetuneConfig", "nn.Module", "GradSync | None"], list]
# One micro batch's loss: a fresh forward at each call, weighted (Runtime.loss_weights).
Loss = Callable[[], "torch.Tensor"]
# (config, optimizers, this rank's micro batches' losses, runtime) -> this rank's weighted loss,
# the grad norm, the loss scale and whether the update was skipped (fp16 overflow).
Step = Callable[["FinetuneConfig", list, list[Loss], "Runtime"], dict[str, float]]


@dataclass(frozen=True)
class Method:
    name: str
    # Updates each weight inside backward and keeps no gradients: one micro batch per update
    # (sequential_updates for several); fp16 loss scaling and force_overflow_step apply.
    fused: bool
    zero3: bool  # runs under DeepSpeed ZeRO-3 (`--deepspeed`)
    lora: bool  # adds peft LoRA adapters to the model
    trains_base: bool  # the base model's weights train (full-parameter)
    optimizers: BuildOptimizers | None = None  # None: evaluation only
    step: Step | None = None
    # Per optimizer, its lr schedule's warmup: "base" (warmup_ratio) or "adapters"
    # (lora_warmup_ratio, and the official LoRA schedule under lr_schedule official).
    schedules: tuple[str, ...] = ("base",)
    # How `lomo memory` and `lomo throughput` measure a method that trains the base weights
    # without adapters: its name in the tables (None: `name`), its lr (a step's cost does not
    # depend on it; it keeps the updates sane), and whether its optimizer creates its state in
    # the first step (then one warm-up step runs before memory is counted).
    display_name: str | None = None
    measure_lr: float = 1e-3
    state_in_first_step: bool = False

    @property
    def trains(self) -> bool:
        return self.step is not None


# --- optimizers ------------------------------------------------------------------------------


def clip_kwargs(config: "FinetuneConfig") -> dict[str, float | None]:
    return {
        "clip_grad_norm": config.clip_value if config.clip_mode == "norm" else None,
        "clip_grad_value": config.clip_value if config.clip_mode == "value" else None,
    }


def loss_scale_args(config: "FinetuneConfig") -> dict[str, int] | None:
    """fp16 weights turn on dynamic loss scaling in LOMO and AdaLomo; bf16 and fp32 need none."""
    return {"scale_window": config.loss_scale_window} if config.dtype == "fp16" else None


def adamw_kwargs(config: "FinetuneConfig") -> dict[str, float]:
    return {"weight_decay": config.weight_decay, "eps": config.adam_eps}


def lora_parameters(model: "nn.Module") -> list["nn.Parameter"]:
    return [p for name, p in model.named_parameters() if "lora_" in name]


def lomo_optimizers(config, model, sync) -> list:
    from lomo.optim import LOMO

    return [
        LOMO(
            model,
            lr=config.lr,
            weight_decay=config.weight_decay,
            loss_scale_args=loss_scale_args(config),
            sync=sync,
            **clip_kwargs(config),
        )
    ]


def adalomo_optimizers(config, model, sync) -> list:
    from lomo.optim import AdaLomo

    return [
        AdaLomo(
            model,
            lr=config.lr,
            weight_decay=config.weight_decay,
            loss_scale_window=config.loss_scale_window,
            sync=sync,
            **clip_kwargs(config),
        )
    ]


def sgd_optimizers(config, model, sync) -> list:
    import torch

    return [torch.optim.SGD(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)]


def adamw_optimizers(config, model, sync) -> list:
    import torch

    return [torch.optim.AdamW(model.parameters(), lr=config.lr, **adamw_kwargs(config))]


def lora_optimizers(config, model, sync) -> list:
    import torch

    trainable = [p for p in model.parameters() if p.requires_grad]
    return [torch.optim.AdamW(trainable, lr=config.lora_lr, **adamw_kwargs(config))]


def lora_lomo_optimizers(config, model, sync) -> list:
    """[LOMO on the base weights, AdamW on the adapters]: LOMO hooks the base weights only, so
    the adapters' gradients accumulate normally for AdamW."""
    import torch

    from lomo.optim import LOMO

    adapters = lora_parameters(model)
    adapter_ids = {id(p) for p in adapters}
    base = [p for p in model.parameters() if p.requires_grad and id(p) not in adapter_ids]
    return [
        LOMO(
            model,
            lr=config.lr,
            weight_decay=config.weight_decay,
            loss_scale_args=loss_scale_args(config),
            sync=sync,
            params=base,
            **clip_kwargs(config),
        ),
        torch.optim.AdamW(adapters, lr=config.lora_lr, **adamw_kwargs(config)),
    ]


# --- one training step -----------------------------------------------------------------------


def fused_stats(optimizer: "FusedOptimizer", loss: "torch.Tensor") -> dict[str, float]:
    norm = optimizer.last_grad_norm
    return {
        "loss": loss.item(),
        "grad_norm": norm.item() if norm is not None else float("nan"),
        "loss_scale": optimizer.loss_scale,  # after this step: halved if it overflowed
        "overflow": int(optimizer.overflow),  # 1: inf/NaN gradients, the update was skipped
    }


def fused_step(config, optimizers, losses, runtime) -> dict[str, float]:
    """One micro batch; the optimizer runs its forward and backward pass(es) and updates."""
    (optimizer,), (loss,) = optimizers, losses
    return fused_stats(optimizer, optimizer.step(loss))


def trainable_parameters(optimizer: Any) -> list["torch.Tensor"]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def backward_step(config, optimizers, losses, runtime) -> dict[str, float]:
    """A torch optimizer: standard backward with accumulation over the micro batches, the
    gradients summed over processes and clipped, then the update."""
    import torch

    (optimizer,) = optimizers
    total_loss = 0.0
    for loss_fn in losses:
        loss = loss_fn()
        loss.backward()
        runtime.end_of_backward()
        total_loss += loss.item()
    params = trainable_parameters(optimizer)
    runtime.sum_gradients(params)
    if config.clip_mode == "norm":
        norm = torch.nn.utils.clip_grad_norm_(params, config.clip_value)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        if config.clip_mode == "value":
            torch.nn.utils.clip_grad_value_(params, config.clip_value)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {"loss": total_loss, "grad_norm": norm.item(), "loss_scale": 1.0, "overflow": 0}


def lora_lomo_step(config, optimizers, losses, runtime) -> dict[str, float]:
    """LOMO updates the base weights inside backward while the adapters' gradients accumulate
    for AdamW; the norm pass (clipping, fp16) must not leave adapter gradients behind, and
    under fp16 loss scaling the adapters' gradients are unscaled before AdamW. Where a
    graph cannot be backpropagated twice (ZeRO-3) the update pass runs its own forward, with
    the norm pass's random state (dropout masks)."""
    from lomo.optim import rng_state, set_rng_state

    (base, adapters), (closure,) = optimizers, losses
    fresh_forward = base.norm_pass_required and base.sync.fresh_forward_per_pass
    state = rng_state() if fresh_forward else None
    loss = closure()
    if base.norm_pass_required:
        base.grad_norm(loss, retain_graph=not fresh_forward)
        adapters.zero_grad(set_to_none=True)
        if fresh_forward and not base.overflow:
            set_rng_state(state)
            loss = closure()
    scale = base.loss_scale  # fp16: the adapters' gradients come scaled by it, as LOMO's do
    base.fused_backward(loss)
    if not base.overflow:
        params = trainable_parameters(adapters)
        runtime.sum_gradients(params)
        if scale != 1.0:
            for param in params:
                if param.grad is not None:
                    param.grad.div_(scale)
        adapters.step()
    adapters.zero_grad(set_to_none=True)
    return fused_stats(base, loss)


# --- the methods -----------------------------------------------------------------------------

# sgd and adamw do not run under ZeRO-3: they would need DeepSpeed's optimizer and its fp32
# states. lora+lomo: adapters by AdamW, base weights by LOMO, in one backward.
METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        Method(
            name="zero-shot",
            fused=False,
            zero3=True,
            lora=False,
            trains_base=False,
        ),
        Method(
            name="lomo",
            fused=True,
            zero3=True,
            lora=False,
            trains_base=True,
            optimizers=lomo_optimizers,
            step=fused_step,
            display_name="LOMO",
        ),
        Method(
            name="adalomo",
            fused=True,
            zero3=True,
            lora=False,
            trains_base=True,
            optimizers=adalomo_optimizers,
            step=fused_step,
            display_name="AdaLomo",
            state_in_first_step=True,
        ),
        Method(
            name="sgd",
            fused=False,
            zero3=False,
            lora=False,
            trains_base=True,
            optimizers=sgd_optimizers,
            step=backward_step,
            display_name="SGD",
        ),
        Method(
            name="adamw",
            fused=False,
            zero3=False,
            lora=False,
            trains_base=True,
            optimizers=adamw_optimizers,
            step=backward_step,
            display_name="AdamW",
            measure_lr=1e-5,
            state_in_first_step=True,
        ),
        Method(
            name="lora",
            fused=False,
            zero3=True,
            lora=True,
            trains_base=False,
            optimizers=lora_optimizers,
            step=backward_step,
            schedules=("adapters",),
        ),
        Method(
            name="lora+lomo",
            fused=True,
            zero3=True,
            lora=True,
            trains_base=True,
            optimizers=lora_lomo_optimizers,
            step=lora_lomo_step,
            schedules=("base", "adapters"),
        ),
    )
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}: expected one of {', '.join(METHODS)}")
    return METHODS[name]


# --- what `lomo memory` and `lomo throughput` measure ------------------------------------


@dataclass(frozen=True)
class Peer:
    """An external original measured beside our methods (lomo-optim 0.1.1), not a method."""

    name: str
    original_of: str  # the method it is the original of: the same lr and first-step state
    cls: str  # its class in lomo_optim
    display_name: str


PEERS = {
    peer.name: peer
    for peer in (
        Peer("lomo-optim", original_of="lomo", cls="Lomo", display_name="lomo-optim"),
        Peer(
            "adalomo-optim",
            original_of="adalomo",
            cls="AdaLomo",
            display_name="AdaLomo (lomo-optim)",
        ),
    )
}


def measured_methods() -> dict[str, Method]:
    """The methods whose step memory and throughput measure: those that train the base
    weights without adapters, in METHODS order."""
    return {name: m for name, m in METHODS.items() if m.trains_base and not m.lora}


def optimizer_names() -> list[str]:
    """What `--optimizers` takes: the measured methods, then the lomo-optim originals."""
    return [*measured_methods(), *PEERS]
