"""LOMO and AdaLomo: optimizers that update each parameter inside the backward pass.

Each trainable parameter gets a `register_post_accumulate_grad_hook`. When autograd has
accumulated a parameter's full gradient (tied weights included), the hook updates that
parameter in fp32 and frees the gradient, so at most about one gradient is alive at a time.

Clipping by global norm and fp16 overflow detection need information about *all*
gradients before the first update, so they cost a first backward pass that only sums
gradient norms (`grad_norm`); the second pass (`fused_backward`) updates. Without norm
clipping, in fp32 or bf16, a step is a single backward pass.

The API mirrors `lomo-optim` 0.1.1 (`grad_norm(loss)`, `fused_backward(loss, lr)`), and
both classes are real `torch.optim.Optimizer`s: `param_groups[i]["lr"]` drives the update,
so `torch.optim.lr_scheduler` works, and `state_dict()` holds every piece of state.

Data parallelism (plain, or DeepSpeed ZeRO-3) is a `sync` strategy from `lomo.sync`
that the hook calls to sum the gradient over ranks and to find the slice of the weights this
rank updates.
"""

import math
import random
from collections.abc import Callable
from itertools import chain
from typing import Any

import torch
from torch import Tensor, nn

from lomo.loss_scaler import DynamicLossScaler
from lomo.sync import GradSync

NORM_EPS = 1e-6  # as in torch.nn.utils.clip_grad_norm_ and the official code
UPDATE_BLOCK = 2**20  # values per block of an update's fp32 temporaries (4 MiB each)


def _rms(tensor: Tensor) -> Tensor:
    return torch.linalg.vector_norm(tensor) / math.sqrt(tensor.numel())


class FusedOptimizer(torch.optim.Optimizer):
    """Shared machinery: hooks, the norm pass, clipping and loss scaling.

    Subclasses implement `_update(param, grad, group)`, which changes this rank's shard of
    `param` (`self.sync.shard(param)`) in place given its gradient summed over ranks (of that
    shard, or of the whole parameter if `full_gradient`), in the parameter's dtype, still
    scaled and unclipped: `_unscale_and_clip(grad)` makes an fp32 copy (or the fp32 gradient
    itself) of the whole gradient or of one block of it.
    """

    full_gradient = False  # True: _update needs the whole summed gradient, not its shard

    def __init__(
        self,
        model: nn.Module,
        param_groups: list[dict[str, Any]],
        defaults: dict[str, Any],
        clip_grad_norm: float | None,
        clip_grad_value: float | None,
        loss_scaler: DynamicLossScaler | None,
        static_loss_scale: float = 1.0,
        sync: GradSync | None = None,
    ) -> None:
        for lr in (defaults["lr"], *(group.get("lr", 0.0) for group in param_groups)):
            if lr < 0:
                raise ValueError(f"learning rate must be >= 0, got {lr}")
        if clip_grad_norm is not None and clip_grad_value is not None:
            raise ValueError("set clip_grad_norm or clip_grad_value, not both")
        if clip_grad_norm is not None and clip_grad_norm <= 0:
            raise ValueError(f"clip_grad_norm must be > 0, got {clip_grad_norm}")
        if clip_grad_value is not None and clip_grad_value <= 0:
            raise ValueError(f"clip_grad_value must be > 0, got {clip_grad_value}")
        super().__init__(param_groups, defaults)
        self.model = model
        self.clip_grad_norm = clip_grad_norm
        self.clip_grad_value = clip_grad_value
        self.loss_scaler = loss_scaler
        self.static_loss_scale = static_loss_scale
        self.sync = sync if sync is not None else GradSync()
        self.clip_coef: Tensor | None = None
        self.overflow = False  # True when the last norm pass found inf/nan: the step is skipped
        self.last_grad_norm: Tensor | None = None
        self._mode: str | None = None  # "norm" or "update" while one of our passes runs
        self._norm_pass_done = False
        self._sq_norm: Tensor | None = None
        self._hook_handles = [
            p.register_post_accumulate_grad_hook(self._make_hook(group_index))
            for group_index, group in enumerate(self.param_groups)
            for p in group["params"]
        ]

    @property
    def loss_scale(self) -> float:
        return self.loss_scaler.scale if self.loss_scaler is not None else self.static_loss_scale

    @property
    def norm_pass_required(self) -> bool:
        return self.clip_grad_norm is not None or self.loss_scaler is not None

    def _make_hook(self, group_index: int) -> Callable[[Tensor], None]:
        # The group is looked up at call time: load_state_dict replaces the group dicts.
        return lambda param: self._on_grad_ready(param, group_index)

    @torch.no_grad()
    def _on_grad_ready(self, param: Tensor, group_index: int) -> None:
        if self._mode is None:
            return  # a backward that is not ours (e.g. LoRA's AdamW part): leave .grad alone
        grad = param.grad
        param.grad = None
        # The norm is that of the global gradient (the sum over ranks), so the sum comes first.
        full = self._mode == "update" and self.full_gradient
        shard_grad, full_grad = self.sync.sum_over_ranks(param, grad, full)
        if self._mode == "norm":
            norm = torch.linalg.vector_norm(shard_grad, dtype=torch.float32)
            self._sq_norm += norm.square().to(self._sq_norm.device)
            return
        # `_update` gets the only reference, so it can free a low-precision gradient early.
        grads = [full_grad if full else shard_grad]
        del grad, shard_grad, full_grad
        self._update(param, grads.pop(), self.param_groups[group_index])
        self.sync.after_update(param)

    def _unscale_and_clip(self, grad: Tensor) -> Tensor:
        """The fp32 gradient, unscaled and clipped (changes an fp32 `grad`, which is ours)."""
        grad = grad.to(torch.float32)  # aliases an fp32 grad
        if self.loss_scale != 1.0:
            grad.div_(self.loss_scale)
        if self.clip_grad_value is not None:
            grad.clamp_(-self.clip_grad_value, self.clip_grad_value)
        elif self.clip_coef is not None:
            grad.mul_(self.clip_coef.to(grad.device))
        return grad

    def _update(self, param: Tensor, grad: Tensor, group: dict[str, Any]) -> None:
        raise NotImplementedError

    def _backward(self, loss: Tensor, mode: str, retain_graph: bool) -> None:
        if loss.dim() != 0:
            raise ValueError(f"loss must be a scalar, got shape {tuple(loss.shape)}")
        self._mode = mode
        try:
            scaled = loss * self.loss_scale if self.loss_scale != 1.0 else loss
            scaled.backward(retain_graph=retain_graph)
            self.sync.end_of_backward()
        finally:
            self._mode = None

    def grad_norm(self, loss: Tensor, retain_graph: bool = True) -> Tensor:
        """First backward pass: the global gradient 2-norm, no parameter changes.

        Keeps the graph (`retain_graph`) so that `fused_backward(loss)` can run on the same
        loss; under ZeRO-3 that is impossible and the update needs a fresh forward. Sets
        `overflow` (fp16: inf/nan found, the scale is halved and the next
        `fused_backward` skips the step) and the clipping coefficient.
        """
        first = self.param_groups[0]["params"][0]
        self._sq_norm = torch.zeros((), dtype=torch.float32, device=first.device)
        self._backward(loss, mode="norm", retain_graph=retain_graph)
        total_norm = self.sync.sum_over_shards(self._sq_norm).sqrt() / self.loss_scale
        self.last_grad_norm = total_norm
        finite = bool(torch.isfinite(total_norm))
        if not finite and self.loss_scaler is None:
            raise FloatingPointError(
                f"the gradient norm is {total_norm.item()} (loss {loss.item()}): "
                "the loss or a gradient overflowed"
            )
        self.overflow = not finite
        if self.overflow:
            self.loss_scaler.update(overflow=True)
            self.clip_coef = None
        elif self.clip_grad_norm is not None:
            self.clip_coef = (self.clip_grad_norm / (total_norm + NORM_EPS)).clamp(max=1.0)
        self._norm_pass_done = True
        return total_norm

    def fused_backward(self, loss: Tensor, lr: float | None = None) -> None:
        """The backward pass that updates every parameter as its gradient arrives.

        `lr`, if given, is written into every parameter group first (lomo-optim's calling
        convention); leave it out to use the groups' lr, e.g. as set by a scheduler.
        """
        if lr is not None:
            if lr < 0:
                raise ValueError(f"learning rate must be >= 0, got {lr}")
            for group in self.param_groups:
                group["lr"] = lr
        if self.norm_pass_required and not self._norm_pass_done:
            raise RuntimeError(
                "this step needs the norm pass first (clip_grad_norm is set or fp16 loss "
                "scaling is on): call opt.grad_norm(loss) before opt.fused_backward(loss), "
                "or use opt.step(closure)"
            )
        self._norm_pass_done = False
        if not self.norm_pass_required:
            self.overflow = False
        if self.overflow:
            return  # the norm pass found inf/nan: skip the whole step, no weight changes
        self._backward(loss, mode="update", retain_graph=False)
        self.clip_coef = None
        if self.loss_scaler is not None:
            self.loss_scaler.update(overflow=False)

    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor:  # type: ignore[override]
        """One training step. `closure()` runs the forward pass and returns the loss.

        Where a graph cannot be backpropagated twice (ZeRO-3), the norm pass and the update
        pass each call `closure()`, with the same random state (dropout masks), so both see
        the same loss."""
        if closure is None:
            raise ValueError(
                f"{type(self).__name__}.step needs a closure returning the loss: the update "
                "happens inside the backward pass, so there is no separate step"
            )
        fresh_forward = self.norm_pass_required and self.sync.fresh_forward_per_pass
        rng = rng_state() if fresh_forward else None
        with torch.enable_grad():
            loss = closure()
        if self.norm_pass_required:
            self.grad_norm(loss, retain_graph=not fresh_forward)
        if fresh_forward and not self.overflow:
            set_rng_state(rng)
            with torch.enable_grad():
                loss = closure()
        self.fused_backward(loss)
        return loss

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.loss_scaler is not None:
            state["loss_scaler"] = self.loss_scaler.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        scaler_state = state_dict.pop("loss_scaler", None)
        super().load_state_dict(state_dict)
        # torch casts state tensors to each parameter's dtype; moments must stay fp32.
        saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        params = chain.from_iterable(g["params"] for g in self.param_groups)
        for param_id, param in zip(saved_ids, params, strict=True):
            for key, value in state_dict["state"].get(param_id, {}).items():
                if isinstance(value, Tensor):
                    self.state[param][key] = value.to(device=param.device, copy=True)
        if scaler_state is not None and self.loss_scaler is not None:
            self.loss_scaler.load_state_dict(scaler_state)

    def remove_hooks(self) -> None:
        """Detach the optimizer from the model (after this, backward is plain again)."""
        for handle in self._hook_handles:
            handle.remove()
        self._hook_handles = []


def rng_state() -> dict[str, Any]:
    """torch's (and CUDA's) and Python's random state: a pass that must replay the same dropout
    masks (the update pass after the norm pass), or a checkpoint, restores it."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


Params = list[Tensor] | list[dict[str, Any]]


def param_groups(model: nn.Module, params: Params | None) -> list[dict[str, Any]]:
    """torch-style parameter groups: `params` as torch's optimizers take it, a list of tensors
    or of dicts with "params" and the group's own settings (e.g. weight_decay 0 for norms and
    biases); by default one group of every trainable parameter of `model`."""
    if params is None:
        # model.parameters() yields a tied weight once, so it gets exactly one hook.
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"{type(model).__name__} has no parameter with requires_grad=True")
    params = list(params)
    groups = params if params and isinstance(params[0], dict) else [{"params": params}]
    groups = [{**group, "params": list(group["params"])} for group in groups]
    if not any(group["params"] for group in groups):
        raise ValueError("params holds no parameter")
    if any(not p.requires_grad for group in groups for p in group["params"]):
        raise ValueError("params holds a parameter with requires_grad=False: it gets no gradient")
    return groups


def _fp16_params(groups: list[dict[str, Any]]) -> bool:
    return any(p.dtype == torch.float16 for group in groups for p in group["params"])


def _apply_in_fp32(param: Tensor, update: Callable[[Tensor], None]) -> None:
    """Run `update` on an fp32 view of `param` and copy the result back if needed."""
    if param.dtype == torch.float32:
        update(param)
        return
    param_fp32 = param.float()
    update(param_fp32)
    param.copy_(param_fp32)


class LOMO(FusedOptimizer):
    """LOMO (Lv et al., 2023): SGD whose update is fused into the backward pass.

    Per parameter, in fp32: `p *= 1 - lr * weight_decay` (decoupled), then `p -= lr * g`, with
    the lr and weight decay of its group: `params` takes groups as torch's optimizers do
    (`param_groups`), e.g. weight decay off for norms and biases.
    fp16 parameters turn on dynamic loss scaling (`loss_scale_args` are passed to
    `DynamicLossScaler`); bf16 and fp32 need none.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 1e-3,
        clip_grad_norm: float | None = None,
        clip_grad_value: float | None = None,
        weight_decay: float = 0.0,
        loss_scale_args: dict[str, Any] | None = None,
        sync: GradSync | None = None,
        params: Params | None = None,
    ) -> None:
        groups = param_groups(model, params)
        scaler = None
        if _fp16_params(groups) or loss_scale_args is not None:
            scaler = DynamicLossScaler(**(loss_scale_args or {}))
        super().__init__(
            model,
            groups,
            dict(lr=lr, weight_decay=weight_decay),
            clip_grad_norm=clip_grad_norm,
            clip_grad_value=clip_grad_value,
            loss_scaler=scaler,
            sync=sync,
        )

    def _update(self, param: Tensor, grad: Tensor, group: dict[str, Any]) -> None:
        """Elementwise, so it runs a block at a time: with fp16/bf16 weights the fp32 copies of
        the gradient and of the weight exist for one block only, never for a whole matrix."""
        lr, weight_decay = group["lr"], group["weight_decay"]
        shard = self.sync.shard(param).view(-1)
        for param_block, grad_block in zip(
            shard.split(UPDATE_BLOCK), grad.reshape(-1).split(UPDATE_BLOCK), strict=True
        ):
            grad_fp32 = self._unscale_and_clip(grad_block)

            def sgd(param_fp32: Tensor, grad_fp32: Tensor = grad_fp32) -> None:
                if weight_decay:
                    param_fp32.mul_(1.0 - lr * weight_decay)
                param_fp32.add_(grad_fp32, alpha=-lr)

            _apply_in_fp32(param_block, sgd)


class AdaLomo(FusedOptimizer):
    """AdaLomo (Lv et al., 2023b): LOMO with an Adafactor-style adaptive step size.

    Per parameter: a factored (row and column) second moment for matrices, a full one for
    vectors, `beta2_t = 1 - t ** decay_rate`; the update is normalised so its RMS is at
    most `clip_threshold`, and scaled by `lr * max(eps[1], RMS(p))`. The moments and the
    step count live in `self.state`, so they are saved by `state_dict()`.

    `loss_scale` multiplies the loss before backward (the gradients are divided back);
    with fp16 parameters it is the initial scale of a dynamic loss scaler, which doubles it
    after `loss_scale_window` clean steps.

    The moments and the update come from the whole summed gradient (the factored moment
    needs its row and column means), identically on every rank; each rank then applies its
    shard of the update, and RMS(p) sums squares over all ranks' shards.
    """

    full_gradient = True

    def __init__(
        self,
        model: nn.Module,
        lr: float = 1e-3,
        loss_scale: float = 2**10,
        loss_scale_window: int = DynamicLossScaler.scale_window,
        eps: tuple[float, float] = (1e-30, 1e-3),
        clip_threshold: float = 1.0,
        decay_rate: float = -0.8,
        clip_grad_norm: float | None = None,
        clip_grad_value: float | None = None,
        weight_decay: float = 0.0,
        sync: GradSync | None = None,
        params: Params | None = None,
    ) -> None:
        if loss_scale <= 0:
            raise ValueError(f"loss_scale must be > 0, got {loss_scale}")
        groups = param_groups(model, params)
        scaler = None
        if _fp16_params(groups):
            scaler = DynamicLossScaler(init_scale=loss_scale, scale_window=loss_scale_window)
        super().__init__(
            model,
            groups,
            dict(
                lr=lr,
                eps=eps,
                clip_threshold=clip_threshold,
                decay_rate=decay_rate,
                weight_decay=weight_decay,
            ),
            clip_grad_norm=clip_grad_norm,
            clip_grad_value=clip_grad_value,
            loss_scaler=scaler,
            static_loss_scale=loss_scale,
            sync=sync,
        )

    def _update(self, param: Tensor, grad: Tensor, group: dict[str, Any]) -> None:
        grad = self._unscale_and_clip(grad)  # a low-precision gradient is freed here
        state = self.state[param]
        factored = param.dim() >= 2
        if not state:
            state["step"] = 0
            if factored:
                state["exp_avg_sq_row"] = grad.new_zeros(grad.shape[:-1])
                state["exp_avg_sq_col"] = grad.new_zeros(grad.shape[:-2] + grad.shape[-1:])
            else:
                state["exp_avg_sq"] = torch.zeros_like(grad)
        state["step"] += 1
        beta2 = 1.0 - state["step"] ** group["decay_rate"]
        eps_sq, eps_scale = group["eps"]

        # Memory: one full-size fp32 temporary besides the gradient (the squares, freed before
        # the weight's fp32 copy exists); the update is built in the gradient's own storage.
        # Same operations, in the same order, as lomo-optim 0.1.1: the same values, bit for bit.
        squared = grad.square().add_(eps_sq)
        if factored:
            row, col = state["exp_avg_sq_row"], state["exp_avg_sq_col"]
            row.mul_(beta2).add_(squared.mean(dim=-1), alpha=1.0 - beta2)
            col.mul_(beta2).add_(squared.mean(dim=-2), alpha=1.0 - beta2)
            del squared
            row_factor = (row / row.mean(dim=-1, keepdim=True)).rsqrt_().unsqueeze(-1)
            col_factor = col.unsqueeze(-2).rsqrt()
            # update = (row_factor * col_factor) * grad, a block of rows at a time
            rows = max(1, UPDATE_BLOCK // grad.shape[-1])
            for grad_rows, factor_rows in zip(
                grad.split(rows, dim=-2), row_factor.split(rows, dim=-2), strict=True
            ):
                grad_rows.mul_(factor_rows * col_factor)
        else:
            second_moment = state["exp_avg_sq"]
            second_moment.mul_(beta2).add_(squared, alpha=1.0 - beta2)
            del squared
            grad.mul_(second_moment.rsqrt())
        update = grad
        update.div_((_rms(update) / group["clip_threshold"]).clamp_(min=1.0))

        weight_decay = group["weight_decay"]
        update = self.sync.local(param, update)

        def adaptive_step(param_fp32: Tensor) -> None:
            rms = self.sync.norm(param_fp32) / math.sqrt(grad.numel())  # over the whole param
            step_size = group["lr"] * rms.clamp(min=eps_scale)
            if weight_decay:
                param_fp32.mul_(1.0 - step_size * weight_decay)
            param_fp32.add_(update, alpha=-step_size)  # one fused multiply-add, as lomo-optim

        _apply_in_fp32(self.sync.shard(param), adaptive_step)
