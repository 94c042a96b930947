"""LOMO and AdaLomo against independent references: torch.optim.SGD, torch's clipping
utilities, lomo-optim 0.1.1 and hand computations. Our side runs with Hugging Face's loss and
with the chunked loss of `lomo.loss` (the training loss of `lomo finetune`); the references
always with Hugging Face's `model(...).loss`."""

import copy
import io
import math

import pytest
import torch
from tiny_models import lm_loss, tiny_llama, token_batches

from lomo import LOMO, AdaLomo, DynamicLossScaler, LossScaleUnderflowError
from lomo.loss import causal_lm_loss


def chunked_lm_loss(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    return causal_lm_loss(model, tokens, None, tokens, chunk_tokens=5)


LOSSES = {"hf": lm_loss, "chunked": chunked_lm_loss}
with_both_losses = pytest.mark.parametrize("loss", list(LOSSES))


def max_param_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(
        (pa.float() - pb.float()).abs().max().item()
        for pa, pb in zip(a.parameters(), b.parameters(), strict=True)
    )


def run_sgd(model, batches, lr, clip=None, scheduler_fn=None):
    """The plain reference: full backward, optional torch clipping, torch.optim.SGD."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    scheduler = scheduler_fn(opt) if scheduler_fn else None
    for tokens in batches:
        opt.zero_grad()
        lm_loss(model, tokens).backward()
        if clip == "norm":
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        elif clip == "value":
            torch.nn.utils.clip_grad_value_(model.parameters(), 0.01)
        opt.step()
        if scheduler:
            scheduler.step()


def run_fused(opt, model, batches, scheduler=None, loss="hf"):
    for tokens in batches:
        opt.step(lambda tokens=tokens: LOSSES[loss](model, tokens))
        if scheduler:
            scheduler.step()


@with_both_losses
def test_lomo_equals_sgd(loss):
    model = tiny_llama()
    reference = copy.deepcopy(model)
    batches = token_batches(5)
    run_fused(LOMO(model, lr=0.1), model, batches, loss=loss)
    run_sgd(reference, batches, lr=0.1)
    assert max_param_diff(model, tiny_llama()) > 1e-3  # the weights did move
    assert max_param_diff(model, reference) <= 1e-6


@with_both_losses
@pytest.mark.parametrize("clip", ["norm", "value"])
def test_lomo_clipping_equals_torch_clipping(clip, loss):
    model = tiny_llama()
    reference = copy.deepcopy(model)
    batches = token_batches(5)
    kwargs = {"clip_grad_norm": 1.0} if clip == "norm" else {"clip_grad_value": 0.01}
    opt = LOMO(model, lr=0.5, **kwargs)
    norms = []
    for tokens in batches:
        opt.step(lambda tokens=tokens: LOSSES[loss](model, tokens))
        if clip == "norm":
            norms.append(opt.last_grad_norm.item())
    run_sgd(reference, batches, lr=0.5, clip=clip)
    if clip == "norm":
        assert max(norms) > 1.0  # clipping was active in this test
    assert max_param_diff(model, reference) <= 1e-6


def test_grad_norm_equals_torch_total_norm():
    model = tiny_llama()
    reference = copy.deepcopy(model)
    tokens = token_batches(1)[0]
    lm_loss(reference, tokens).backward()
    expected = torch.nn.utils.get_total_norm([p.grad for p in reference.parameters()])
    opt = LOMO(model, lr=0.1, clip_grad_norm=1.0)
    norm = opt.grad_norm(lm_loss(model, tokens))
    assert norm.item() == pytest.approx(expected.item(), rel=1e-6)
    assert all(p.grad is None for p in model.parameters())  # the norm pass keeps nothing
    assert max_param_diff(model, reference) == 0.0  # and updates nothing


@pytest.fixture
def lomo_optim(monkeypatch):
    """lomo-optim 0.1.1; its AdaLomo puts its state on `.cuda()`, which we keep on CPU."""
    lomo_optim = pytest.importorskip("lomo_optim")
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *args, **kwargs: self)
    return lomo_optim


def run_lomo_optim(opt, model, batches, lr, clip_norm):
    for tokens in batches:
        if clip_norm:
            opt.grad_norm(lm_loss(model, tokens))
        opt.fused_backward(lm_loss(model, tokens), lr)


@with_both_losses
@pytest.mark.parametrize("clip_norm", [None, 1.0])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_lomo_matches_lomo_optim(lomo_optim, clip_norm, weight_decay, loss):
    model = tiny_llama()
    reference = copy.deepcopy(model)
    batches = token_batches(4)
    opt = LOMO(model, lr=0.3, clip_grad_norm=clip_norm, weight_decay=weight_decay)
    run_fused(opt, model, batches, loss=loss)
    opt = lomo_optim.Lomo(reference, lr=0.3, clip_grad_norm=clip_norm, weight_decay=weight_decay)
    run_lomo_optim(opt, reference, batches, 0.3, clip_norm)
    for ours, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)


@with_both_losses
@pytest.mark.parametrize("clip_norm", [None, 1.0])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adalomo_matches_lomo_optim(lomo_optim, clip_norm, weight_decay, loss):
    model = tiny_llama()
    reference = copy.deepcopy(model)
    batches = token_batches(4)
    opt = AdaLomo(model, lr=1e-2, clip_grad_norm=clip_norm, weight_decay=weight_decay)
    run_fused(opt, model, batches, loss=loss)
    opt = lomo_optim.AdaLomo(
        reference, lr=1e-2, clip_grad_norm=clip_norm, weight_decay=weight_decay
    )
    run_lomo_optim(opt, reference, batches, 1e-2, clip_norm)
    assert max_param_diff(model, tiny_llama()) > 1e-3
    for ours, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_adalomo_update_bit_identical_to_lomo_optim(lomo_optim, dtype):
    """Same gradients (Hugging Face's loss on both sides, no clipping): the same weights, bit
    for bit, after several steps with weight decay."""
    model = tiny_llama(dtype=dtype)
    reference = copy.deepcopy(model)
    batches = token_batches(3)
    run_fused(AdaLomo(model, lr=1e-2, weight_decay=0.1), model, batches)
    opt = lomo_optim.AdaLomo(reference, lr=1e-2, weight_decay=0.1)
    run_lomo_optim(opt, reference, batches, 1e-2, None)
    assert max_param_diff(model, tiny_llama(dtype=dtype)) > 1e-3
    for ours, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(ours, theirs)


@with_both_losses
def test_tied_weights_updated_once_with_summed_gradient(loss):
    model = tiny_llama(tie=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    tokens = token_batches(1)[0]
    # Untied twin with the same values: the tied gradient is the sum of both parts.
    untied = tiny_llama(tie=False)
    untied.load_state_dict(model.state_dict(), strict=False)
    untied.lm_head.weight.data.copy_(model.lm_head.weight)
    lm_loss(untied, tokens).backward()
    summed = untied.model.embed_tokens.weight.grad + untied.lm_head.weight.grad
    expected = model.model.embed_tokens.weight.detach() - 0.1 * summed

    LOMO(model, lr=0.1).step(lambda: LOSSES[loss](model, tokens))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    torch.testing.assert_close(model.model.embed_tokens.weight, expected, rtol=0, atol=1e-6)
    layer = model.model.layers[0].mlp.up_proj.weight
    twin = untied.model.layers[0].mlp.up_proj.weight
    torch.testing.assert_close(layer, twin.detach() - 0.1 * twin.grad, rtol=0, atol=1e-6)


def test_frozen_parameters_untouched():
    model = tiny_llama()
    reference = copy.deepcopy(model)
    for m in (model, reference):
        m.model.embed_tokens.weight.requires_grad_(False)
        m.model.layers[0].requires_grad_(False)
    frozen_before = copy.deepcopy(model.model.layers[0].state_dict())
    batches = token_batches(3)
    run_fused(LOMO(model, lr=0.1), model, batches)
    run_sgd(reference, batches, lr=0.1)
    for name, value in model.model.layers[0].state_dict().items():
        assert torch.equal(value, frozen_before[name]), name
    assert max_param_diff(model, reference) <= 1e-6


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_update_computed_in_fp32(dtype):
    model = tiny_llama(dtype=dtype)
    reference = copy.deepcopy(model)
    tokens = token_batches(1)[0]
    lm_loss(reference, tokens).backward()
    lr, decay = 0.05, 0.1
    expected = [
        (p.float() * (1 - lr * decay) - lr * p.grad.float()).to(dtype)
        for p in reference.parameters()
    ]
    # fp16: loss scale 1 so the gradient equals the reference's bit for bit.
    scale = {"init_scale": 1.0} if dtype == torch.float16 else None
    opt = LOMO(model, lr=lr, weight_decay=decay, loss_scale_args=scale)
    opt.step(lambda: lm_loss(model, tokens))
    for p, e in zip(model.parameters(), expected, strict=True):
        assert p.dtype == dtype
        torch.testing.assert_close(p, e, rtol=0, atol=0)


def test_fp16_overflow_skips_step_and_scale_recovers():
    model = tiny_llama(dtype=torch.float16)
    opt = LOMO(model, lr=0.01, loss_scale_args={"init_scale": 2.0**10, "scale_window": 3})
    assert opt.loss_scaler is not None and opt.loss_scale == 2.0**10
    tokens = token_batches(1)[0]
    before = copy.deepcopy(model.state_dict())

    opt.step(lambda: lm_loss(model, tokens) * float("inf"))  # injected overflow
    assert opt.overflow
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name  # bit-identical
    assert all(p.grad is None for p in model.parameters())
    assert opt.loss_scale == 2.0**9

    for _ in range(2):
        opt.step(lambda: lm_loss(model, tokens))
        assert not opt.overflow and opt.loss_scale == 2.0**9
    opt.step(lambda: lm_loss(model, tokens))
    assert opt.loss_scale == 2.0**10  # doubled after 3 clean steps
    assert not torch.equal(model.state_dict()["lm_head.weight"], before["lm_head.weight"])


def test_overflow_at_min_scale_is_an_error():
    model = tiny_llama(dtype=torch.float16)
    opt = LOMO(model, lr=0.01, loss_scale_args={"init_scale": 1.0})
    with pytest.raises(LossScaleUnderflowError, match="minimum loss scale"):
        opt.step(lambda: lm_loss(model, token_batches(1)[0]) * float("nan"))


def test_non_finite_norm_without_scaler_is_an_error():
    model = tiny_llama()
    opt = LOMO(model, lr=0.01, clip_grad_norm=1.0)
    with pytest.raises(FloatingPointError, match="gradient norm"):
        opt.step(lambda: lm_loss(model, token_batches(1)[0]) * float("inf"))


def grad_bytes_alive(params) -> int:
    return sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)


def instrument(model) -> list[int]:
    """After each gradient is accumulated, record the bytes of all `.grad` alive then.

    Registered before the optimizer, so each record sees the newest gradient too."""
    params = list(model.parameters())
    alive = []
    for p in params:
        p.register_post_accumulate_grad_hook(lambda _: alive.append(grad_bytes_alive(params)))
    return alive


@with_both_losses
@pytest.mark.parametrize("optimizer", [LOMO, AdaLomo])
def test_at_most_one_gradient_alive(optimizer, loss):
    model = tiny_llama()
    alive = instrument(model)
    opt = optimizer(model, lr=0.01)
    opt.step(lambda: LOSSES[loss](model, token_batches(1)[0]))
    largest = max(p.numel() * p.element_size() for p in model.parameters())
    assert len(alive) == len(list(model.parameters()))
    assert max(alive) <= largest
    assert grad_bytes_alive(model.parameters()) == 0

    sgd_model = tiny_llama()
    sgd_alive = instrument(sgd_model)
    lm_loss(sgd_model, token_batches(1)[0]).backward()
    total = sum(p.numel() * p.element_size() for p in sgd_model.parameters())
    assert max(sgd_alive) == total  # plain backward: all gradients alive at the end


def warmup_then_linear(opt):
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: min((step + 1) / 2, max(0.0, (6 - step) / 4))
    )


def test_scheduler_drives_lomo_exactly_as_sgd():
    model = tiny_llama()
    reference = copy.deepcopy(model)
    batches = token_batches(5)
    opt = LOMO(model, lr=0.2)
    run_fused(opt, model, batches, scheduler=warmup_then_linear(opt))
    run_sgd(reference, batches, lr=0.2, scheduler_fn=warmup_then_linear)
    assert max_param_diff(model, reference) <= 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_adalomo_state_dict_resume_is_bit_identical(dtype):
    batches = token_batches(5)
    model = tiny_llama(dtype=dtype)
    opt = AdaLomo(model, lr=1e-2, clip_grad_norm=1.0)
    run_fused(opt, model, batches[:3])
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    assert opt.state_dict()["state"][0]["step"] == 3
    run_fused(opt, model, batches[3:])

    buffer.seek(0)
    saved = torch.load(buffer)
    resumed = tiny_llama(seed=123, dtype=dtype)
    resumed.load_state_dict(saved["model"])
    resumed_opt = AdaLomo(resumed, lr=1e-2, clip_grad_norm=1.0)
    resumed_opt.load_state_dict(saved["opt"])
    for state in resumed_opt.state.values():
        assert all(v.dtype == torch.float32 for k, v in state.items() if k != "step")
    run_fused(resumed_opt, resumed, batches[3:])
    assert max_param_diff(model, resumed) == 0.0


def test_loss_scaler_state_round_trips():
    model = tiny_llama(dtype=torch.float16)
    opt = LOMO(model, lr=0.01, loss_scale_args={"init_scale": 8.0, "scale_window": 5})
    opt.step(lambda: lm_loss(model, token_batches(1)[0]) * float("inf"))
    opt.step(lambda: lm_loss(model, token_batches(1)[0]))
    fresh = LOMO(copy.deepcopy(model), lr=0.01)
    fresh.load_state_dict(opt.state_dict())
    assert fresh.loss_scale == 4.0 and fresh.loss_scaler.clean_steps == 1
    assert fresh.loss_scaler.scale_window == 5


def test_plain_backward_outside_fused_passes_keeps_gradients():
    model = tiny_llama()
    LOMO(model, lr=0.1)
    lm_loss(model, token_batches(1)[0]).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_bad_input_errors():
    model = tiny_llama()
    with pytest.raises(ValueError, match="learning rate"):
        LOMO(model, lr=-1.0)
    with pytest.raises(ValueError, match="not both"):
        LOMO(model, clip_grad_norm=1.0, clip_grad_value=1.0)
    with pytest.raises(ValueError, match="clip_grad_norm must be > 0"):
        AdaLomo(model, clip_grad_norm=0.0)
    frozen = tiny_llama().requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter with requires_grad"):
        LOMO(frozen)
    opt = LOMO(model, lr=0.1, clip_grad_norm=1.0)
    with pytest.raises(RuntimeError, match="call opt.grad_norm"):
        opt.fused_backward(lm_loss(model, token_batches(1)[0]), lr=0.1)
    with pytest.raises(ValueError, match="needs a closure"):
        opt.step()
    with pytest.raises(TypeError):
        LOMO(model, loss_scale_args={"delayed_shifts": 2})


def test_default_scale_window_regrows_within_a_paper_run():
    """A paper run has at most 630 updates (1000 examples / batch 16 = 63 per epoch, 10
    epochs). After an overflow at the first update the default window (200) doubles the scale
    back after 200 clean updates, and twice more before the run ends; DeepSpeed's and the
    official code's 1000 would never act."""
    updates = math.ceil(1000 / 16) * 10
    assert updates == 630
    scaler = DynamicLossScaler()
    scales = []
    for step in range(1, updates + 1):
        scaler.update(overflow=step == 1)
        scales.append(scaler.scale)
    start = 2.0**16
    assert scales[0] == start / 2
    assert scales[200] == start  # after step 201: 200 clean steps in a row
    assert max(scales[:200]) == start / 2
    assert scales[-1] == start * 4  # doubled again after steps 401 and 601
    never = DynamicLossScaler(scale_window=1000)
    for step in range(1, updates + 1):
        never.update(overflow=step == 1)
    assert never.scale == start / 2


def no_decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on the matrices only; norms and biases (1-d) without it, at their own lr."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0, "lr": 0.05},
    ]


def test_lomo_param_groups_equal_sgd_with_the_same_groups():
    model = tiny_llama()
    reference = copy.deepcopy(model)
    batches = token_batches(5)
    opt = LOMO(model, lr=0.1, params=no_decay_groups(model, 0.5))
    run_fused(opt, model, batches)
    sgd = torch.optim.SGD(no_decay_groups(reference, 0.5), lr=0.1)
    for tokens in batches:
        sgd.zero_grad()
        lm_loss(reference, tokens).backward()
        sgd.step()
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.05]
    assert max_param_diff(model, tiny_llama()) > 1e-3
    assert max_param_diff(model, reference) <= 1e-6
    # the groups differ: one group with decay everywhere moves the norms elsewhere
    single = tiny_llama()
    run_fused(LOMO(single, lr=0.1, weight_decay=0.5), single, batches)
    assert max_param_diff(single, reference) > 1e-3


def test_param_groups_bad_input_errors():
    model = tiny_llama()
    with pytest.raises(ValueError, match="learning rate"):
        LOMO(model, params=[{"params": list(model.parameters()), "lr": -1.0}])
    with pytest.raises(ValueError, match="holds no parameter"):
        AdaLomo(model, params=[{"params": []}])
    first = next(model.parameters()).requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad=False"):
        LOMO(model, params=[first])
