"""LOMO and AdaLomo in fp16 with dynamic loss scaling against fp32 references, on the
accelerator: CUDA when there is one (scripts/gpu_acceptance.sh runs this module there), else
the same code on CPU."""

import copy

import pytest
import torch
from tiny_models import lm_loss, tiny_llama, token_batches

from lomo import LOMO, AdaLomo

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
STEPS, LR, CLIP = 10, 0.05, 1.0
# 2^24 overflows fp16 gradients of this model: the first steps are skipped, the scale halves
# until the gradients are finite, then training proceeds at that scale.
SCALE = {"init_scale": 2.0**24, "scale_window": 1000}


def fp16_and_fp32_copies(seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The same weights in fp16 and (exactly, the fp16 values) in fp32, on DEVICE."""
    model = tiny_llama(seed, dtype=torch.float16).to(DEVICE)
    return model, copy.deepcopy(model).float()


def max_relative_diff(fp16_model: torch.nn.Module, reference: torch.nn.Module) -> float:
    pairs = zip(fp16_model.parameters(), reference.parameters(), strict=True)
    return max(((a.float() - b).norm() / b.norm()).item() for a, b in pairs)


def max_relative_change(model: torch.nn.Module, initial: torch.nn.Module) -> float:
    return max_relative_diff(initial.half(), model)


def train_fp16(opt, model: torch.nn.Module, batches: list) -> list[bool]:
    """Train with `opt`; which steps were skipped for overflow."""
    skipped = []
    for tokens in batches:
        opt.step(lambda tokens=tokens: lm_loss(model, tokens.to(DEVICE)))
        skipped.append(opt.overflow)
    return skipped


def test_lomo_fp16_with_loss_scaling_tracks_fp32_sgd():
    model, reference = fp16_and_fp32_copies()
    initial = copy.deepcopy(reference)
    batches = token_batches(STEPS)
    opt = LOMO(model, lr=LR, clip_grad_norm=CLIP, loss_scale_args=SCALE)
    skipped = train_fp16(opt, model, batches)
    assert any(skipped) and sum(not s for s in skipped) >= 5, skipped
    assert opt.loss_scale < SCALE["init_scale"]
    # the reference: torch SGD with torch's clipping in fp32, on the batches that were applied
    sgd = torch.optim.SGD(reference.parameters(), lr=LR)
    for tokens, skip in zip(batches, skipped, strict=True):
        if skip:
            continue
        sgd.zero_grad()
        lm_loss(reference, tokens.to(DEVICE)).backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), CLIP)
        sgd.step()
    assert max_relative_change(reference, initial) > 0.05  # the weights moved
    assert max_relative_diff(model, reference) < 2e-3


@pytest.fixture
def lomo_optim(monkeypatch):
    """lomo-optim 0.1.1; off CUDA its AdaLomo's `.cuda()` calls keep the state where it is."""
    import lomo_optim

    if DEVICE.type != "cuda":
        monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *args, **kwargs: self)
    return lomo_optim


def test_adalomo_fp16_with_loss_scaling_tracks_fp32_lomo_optim(lomo_optim):
    model, reference = fp16_and_fp32_copies()
    initial = copy.deepcopy(reference)
    batches = token_batches(STEPS)
    lr = 0.01
    opt = AdaLomo(model, lr=lr, clip_grad_norm=CLIP, loss_scale=SCALE["init_scale"])
    skipped = train_fp16(opt, model, batches)
    assert any(skipped) and sum(not s for s in skipped) >= 5, skipped
    ref_opt = lomo_optim.AdaLomo(reference, lr=lr, clip_grad_norm=CLIP)
    for tokens, skip in zip(batches, skipped, strict=True):
        if skip:
            continue
        loss = lm_loss(reference, tokens.to(DEVICE))
        ref_opt.grad_norm(loss)
        ref_opt.fused_backward(loss, lr)
    assert max_relative_change(reference, initial) > 0.02
    assert max_relative_diff(model, reference) < 2e-3
