"""The paper profile's data order and learning rates are the official code's, step by step.

References, independent of lomo.train: torch's own `DistributedSampler` (what the official
`LOMOTrainer.get_train_sampler` builds, seed 42, `set_epoch(epoch)` for epoch 0..N-1), the
official `LearningRateScheduler` rewritten below from its source (OpenLMLab/LOMO,
lomo/src/utils.py), and transformers' linear schedule (what the official LoRA path steps).
"""

import csv

import pytest
import torch
import transformers
from paths import DATA_DIR
from test_finetune import tiny_config
from torch.utils.data import DataLoader, DistributedSampler

from lomo.loss import causal_lm_loss
from lomo.train import finetune as ft
from lomo.train.evaluate import encode_train_example
from lomo.train.models import load_model, load_tokenizer
from tasks.superglue import get_task, get_template, load_split


class OfficialLearningRateScheduler:
    """lomo/src/utils.py `LearningRateScheduler`, 'linear' branch, as written there."""

    def __init__(self, warmup: float, learning_rate: float, n_steps: int) -> None:
        self.warmup = max(warmup, 0.0)
        self.initial_lr = learning_rate
        if self.warmup > 1:
            self.warmup = self.warmup / n_steps
        self.t_steps = max(2, n_steps)

    def step(self, global_step: int) -> float:
        progress = global_step / self.t_steps
        if progress < self.warmup:
            return self.initial_lr * progress / self.warmup
        return self.initial_lr * max((progress - 1.0) / (self.warmup - 1.0), 0.0)


def official_batches(n: int, batch: int, epochs: int, seed: int) -> list[list[int]]:
    """The official train loader on one GPU: DistributedSampler + DataLoader (drop_last off)."""
    sampler = DistributedSampler(list(range(n)), num_replicas=1, rank=0, shuffle=True, seed=seed)
    loader = DataLoader(list(range(n)), batch_size=batch, sampler=sampler)
    batches = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        batches += [b.tolist() for b in loader]
    return batches


def train_log(folder) -> list[dict]:
    with open(folder / "train_log.csv") as f:
        return list(csv.DictReader(f))


# 10 examples in batches of 4: 3 updates per epoch, the last one of 2 examples; 4 epochs: T = 12,
# warmup 0.25 covers steps 1-2, step 3 is the peak, step 12 has lr 0.
RUN = dict(train_size=10, epochs=4, warmup_ratio=0.25, seed=42)


def test_official_order_and_lr_match_the_official_loop_at_every_step(tmp_path):
    config = tiny_config(method="lomo", data_order="official", lr_schedule="official", **RUN)
    ft.finetune(config, tmp_path)
    log = train_log(tmp_path)
    expected = official_batches(10, config.global_batch, config.epochs, config.seed)
    assert len(log) == len(expected) == 12
    scheduler = OfficialLearningRateScheduler(config.warmup_ratio, config.lr, n_steps=12)
    for s, (row, batch) in enumerate(zip(log, expected, strict=True), start=1):
        assert [int(i) for i in row["examples"].split()] == batch, f"step {s}"
        assert float(row["lr"]) == pytest.approx(scheduler.step(s), rel=1e-12, abs=0), s
    assert float(log[-1]["lr"]) == 0.0 and float(log[2]["lr"]) == config.lr


def test_our_default_order_and_lr_are_not_the_official_ones(tmp_path):
    # The laptop profile's committed results use these: they stay as they were.
    config = tiny_config(method="lomo", **RUN)
    ft.finetune(config, tmp_path)
    log = train_log(tmp_path)
    expected = official_batches(10, config.global_batch, config.epochs, config.seed)
    assert [[int(i) for i in row["examples"].split()] for row in log] != expected
    first = [torch.randperm(10, generator=torch.Generator().manual_seed(42_001)).tolist()[:4]]
    assert [int(i) for i in log[0]["examples"].split()] == first[0]
    assert float(log[0]["lr"]) == pytest.approx(config.lr / 3)  # ceil(12 x 0.25) warmup steps
    assert float(log[-1]["lr"]) == pytest.approx(config.lr / 9)


def official_adapter_lrs(lr: float, warmup_ratio: float, total: int) -> list[float]:
    """The official LoRA path: transformers' linear schedule with hf_warmup * n_steps warmup
    steps, handed to DeepSpeed, which steps it after each update."""
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = transformers.get_scheduler(
        "linear",
        optimizer=optimizer,
        num_warmup_steps=warmup_ratio * total,
        num_training_steps=total,
    )
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_lora_adapters_follow_the_official_lora_schedule(tmp_path):
    config = tiny_config(
        method="lora", lr_schedule="official", lora_warmup_ratio=0.25, lora_lr=1e-3, **RUN
    )
    ft.finetune(config, tmp_path)
    expected = official_adapter_lrs(config.lora_lr, 0.25, 12)
    assert expected[0] == 0.0  # DeepSpeed steps transformers' scheduler after the update
    lrs = [float(row["lr"]) for row in train_log(tmp_path)]
    assert lrs == pytest.approx(expected, rel=1e-12, abs=0)


@pytest.mark.parametrize("warmup", [0.0, 0.05, 0.1, 0.25])
@pytest.mark.parametrize("total", [1, 7, 630])
def test_lora_lomo_schedules_are_the_official_ones(warmup, total):
    # lora+lomo: LOMO on the base by the grid's warmup, AdamW on the adapters by the fixed one.
    config = tiny_config(
        method="lora+lomo", lr_schedule="official", warmup_ratio=warmup, lora_warmup_ratio=0.05
    )
    base, adapters = ft.lr_factors(config, total)
    official = OfficialLearningRateScheduler(warmup, 1.0, n_steps=total)
    assert [base(k) for k in range(total)] == pytest.approx(
        [official.step(s) for s in range(1, total + 1)], rel=1e-12, abs=0
    )
    expected = official_adapter_lrs(1.0, 0.05, total)
    assert [adapters(k) for k in range(total)] == pytest.approx(expected, rel=1e-12, abs=0)


def test_unset_lora_warmup_follows_warmup_ratio():
    config = tiny_config(method="lora+lomo", warmup_ratio=0.25)
    base, adapters = ft.lr_factors(config, 12)
    assert [base(k) for k in range(12)] == [adapters(k) for k in range(12)]


def official_collate(examples: list[dict], pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """The official DataCollatorForCauselLM as train_lomo.py builds it: left padding, pad id 0,
    labels padded with -100; the model then uses its default positions 0..width-1."""
    width = max(len(ex["input_ids"]) for ex in examples)
    pads = [width - len(ex["input_ids"]) for ex in examples]
    return {
        "input_ids": torch.tensor(
            [[pad_token_id] * p + ex["input_ids"] for p, ex in zip(pads, examples, strict=True)]
        ),
        "attention_mask": torch.tensor([[0] * p + [1] * (width - p) for p in pads]),
        "labels": torch.tensor(
            [[-100] * p + ex["labels"] for p, ex in zip(pads, examples, strict=True)]
        ),
    }


def test_official_left_padding_gives_our_loss_and_gradients():
    # Left padding shifts each row's positions by its padding; RoPE attention depends on
    # relative positions only and the padding is masked, so only rounding differs.
    task, tokenizer = get_task("rte"), load_tokenizer("tiny-llama")
    examples = load_split(task.name, "train", "local", DATA_DIR)[:4]
    encoded = [
        encode_train_example(task, ex, get_template("lomo"), tokenizer, 96) for ex in examples
    ]
    assert len({len(ex["input_ids"]) for ex in encoded}) == 3  # the longest cut to 96 tokens
    model = load_model("tiny-llama", attn_implementation="eager")
    results = []
    for batch in (ft.collate(encoded, tokenizer.pad_token_id), official_collate(encoded)):
        model.zero_grad(set_to_none=True)
        loss = causal_lm_loss(model, **batch, chunked=False)
        loss.backward()
        results.append((loss.item(), [p.grad.clone() for p in model.parameters()]))
    (ours, ours_grads), (official, official_grads) = results
    assert official == pytest.approx(ours, rel=1e-6)
    for a, b in zip(ours_grads, official_grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
