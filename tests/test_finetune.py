"""`lomo finetune` end to end on a tiny model and real RTE examples."""

import copy
import csv
import json
import math
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from lomo import LOMO
from lomo import finetune as ft
from lomo.cli import main
from lomo.evaluate import encode_train_example
from lomo.models import load_model, load_tokenizer
from tasks.superglue import get_task, get_template, prepare

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "superglue"


def tiny_config(**overrides) -> ft.FinetuneConfig:
    values = dict(
        model="tiny-llama",
        task="rte",
        data_dir=str(DATA),
        protocol="val-split",
        train_size=8,
        test_size=4,
        max_length=64,
        epochs=2,
        global_batch=4,
        micro_batch=4,
        lr=1e-2,
        warmup_ratio=0.25,
        eval_batch=8,
        clip_mode="norm",
        clip_value=1.0,
    )
    values.update(overrides)
    return ft.FinetuneConfig(**values)


@pytest.mark.parametrize(
    "method, overrides",
    [
        ("zero-shot", {}),
        ("lomo", {}),
        ("adalomo", {"lr": 1e-3, "clip_mode": "none"}),
        ("sgd", {"micro_batch": 2}),
        ("adamw", {"micro_batch": 2, "lr": 1e-4}),
        ("lora", {"micro_batch": 2}),
        ("lora+lomo", {}),
    ],
)
def test_each_method_runs_and_writes_outputs(tmp_path, method, overrides):
    metrics = ft.finetune(tiny_config(method=method, **overrides), tmp_path)
    for name in (
        "config.yaml",
        "metrics.json",
        "predictions.jsonl",
        "resources.json",
        "train_log.csv",
        "data/ids.json",
    ):
        assert (tmp_path / name).is_file(), name
    assert not (tmp_path / "checkpoint.pt").exists()
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert len(on_disk["per_epoch"]) == (1 if method == "zero-shot" else 2)
    assert on_disk["n_eval"] == 4
    predictions = (tmp_path / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 4
    log = (tmp_path / "train_log.csv").read_text().splitlines()
    assert len(log) == 1 + (0 if method == "zero-shot" else 4)  # 8 examples / 4, two epochs
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["method"] == method
    resources = json.loads((tmp_path / "resources.json").read_text())
    assert resources["wall_seconds"] >= resources["train_seconds"] >= 0
    assert resources["peak_memory_bytes"] > 0


def hand_written_loop(config: ft.FinetuneConfig, out: Path) -> torch.nn.Module:
    """A minimal loop written from the spec: same data order, mean loss over the global
    batch's answer tokens, torch clipping, torch optimizer, linear warmup and decay."""
    torch.manual_seed(config.seed)
    task, template = get_task(config.task), get_template(config.template)
    tokenizer = load_tokenizer(config.model)
    data = prepare(
        config.task,
        "val-split",
        "local",
        config.data_dir,
        train_size=config.train_size,
        test_size=config.test_size,
        seed=config.seed,
    )
    encoded = [
        encode_train_example(task, ex, template, tokenizer, config.max_length) for ex in data.train
    ]
    model = load_model(config.model)
    cls = torch.optim.SGD if config.method == "sgd" else torch.optim.AdamW
    opt = cls(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = config.epochs * math.ceil(len(encoded) / config.global_batch)
    warmup = math.ceil(steps * config.warmup_ratio)
    step = 0
    for epoch in range(1, config.epochs + 1):
        generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)
        order = torch.randperm(len(encoded), generator=generator).tolist()
        for start in range(0, len(order), config.global_batch):
            lr_factor = (step + 1) / warmup if step < warmup else (steps - step) / (steps - warmup)
            for group in opt.param_groups:
                group["lr"] = config.lr * lr_factor
            examples = [encoded[i] for i in order[start : start + config.global_batch]]
            width = max(len(ex["input_ids"]) for ex in examples)
            losses, n_answer = [], 0
            for ex in examples:  # one sequence at a time, no padding at all
                ids = torch.tensor([ex["input_ids"]])
                labels = torch.tensor([ex["labels"]])
                logits = model(input_ids=ids).logits[0, :-1]
                targets = labels[0, 1:]
                keep = targets != -100
                losses.append(
                    torch.nn.functional.cross_entropy(
                        logits[keep].float(), targets[keep], reduction="sum"
                    )
                )
                n_answer += int(keep.sum())
            assert width > 0
            (torch.stack(losses).sum() / n_answer).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_value)
            opt.step()
            opt.zero_grad()
            step += 1
    return model


@pytest.mark.parametrize("method, lr", [("sgd", 1e-2), ("adamw", 1e-3)])
def test_torch_methods_match_hand_written_loop(tmp_path, method, lr):
    config = tiny_config(method=method, lr=lr, micro_batch=2, save_model=True)
    ft.finetune(config, tmp_path / "run")
    ours = load_model(str(tmp_path / "run" / "model"))
    reference = hand_written_loop(config, tmp_path)
    for (name, a), b in zip(
        ours.state_dict().items(), reference.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-6, msg=name)
    moved = load_model("tiny-llama")
    assert any(
        not torch.equal(a, b)
        for a, b in zip(ours.state_dict().values(), moved.state_dict().values(), strict=True)
    )


def test_identical_reruns_give_identical_metrics(tmp_path):
    config = tiny_config(method="lomo")
    ft.finetune(config, tmp_path / "a")
    ft.finetune(copy.deepcopy(config), tmp_path / "b")
    for name in ("metrics.json", "predictions.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


class Killed(Exception):
    pass


@pytest.mark.parametrize("method", ["adalomo", "lora"])
def test_kill_and_resume_equals_uninterrupted(tmp_path, monkeypatch, method):
    config = tiny_config(method=method, epochs=3, lr=1e-3)
    ft.finetune(config, tmp_path / "full")

    real_step = ft.train_step

    def dies_in_epoch_3(*args):
        if args[5] == 5:  # the step; 2 updates per epoch: the first update of the third epoch
            raise Killed
        return real_step(*args)

    monkeypatch.setattr(ft, "train_step", dies_in_epoch_3)
    with pytest.raises(Killed):
        ft.finetune(config, tmp_path / "resumed")
    assert (tmp_path / "resumed" / "checkpoint.pt").exists()
    assert not (tmp_path / "resumed" / "metrics.json").exists()
    monkeypatch.setattr(ft, "train_step", real_step)
    ft.finetune(config, tmp_path / "resumed")
    for name in ("metrics.json", "predictions.jsonl"):
        full = (tmp_path / "full" / name).read_bytes()
        assert (tmp_path / "resumed" / name).read_bytes() == full, name
    full_log = (tmp_path / "full" / "train_log.csv").read_text().splitlines()
    resumed_log = (tmp_path / "resumed" / "train_log.csv").read_text().splitlines()
    column = full_log[0].split(",").index("loss")
    assert [r.split(",")[column] for r in resumed_log] == [r.split(",")[column] for r in full_log]


def test_nan_loss_stops_with_step_number(tmp_path, monkeypatch):
    real_loss = ft.batch_loss
    calls = []

    def nan_at_second(model, batch):
        calls.append(1)
        loss = real_loss(model, batch)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(ft, "batch_loss", nan_at_second)
    with pytest.raises(ft.NonFiniteLossError, match=r"step 2 \(epoch 1\)"):
        # without norm clipping each LOMO step runs one forward: the 2nd call is step 2
        ft.finetune(tiny_config(method="lomo", clip_mode="none", epochs=1), tmp_path)
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"method": "magic"}, "method='magic'"),
        ({"task": "squad"}, "unknown task"),
        ({"model": "gpt-17"}, "unknown model"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"global_batch": 6, "micro_batch": 4}, "not a multiple"),
        ({"method": "lomo", "micro_batch": 2}, "cannot accumulate"),
        ({"dtype": "fp16"}, "fp16 needs a GPU"),
        ({"template": "gpt3"}, "unknown template"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path, overrides, message):
    if overrides.get("dtype") == "fp16" and torch.cuda.is_available():
        pytest.skip("fp16 is allowed on GPU")
    with pytest.raises(ValueError, match=message):
        config = tiny_config(**overrides)
        config.validate()
        ft.finetune(config, tmp_path)
    assert not (tmp_path / "metrics.json").exists()


def test_help_lists_choices_and_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    assert "--method METHOD one of zero-shot, lomo, adalomo, sgd, adamw, lora, lora+lomo;" in text
    assert "--lr LR default: 0.03" in text
    assert "--lora-targets LORA_TARGETS [LORA_TARGETS ...] default: ['q_proj', 'v_proj']" in text


def test_sequential_updates_allow_small_micro_batches(tmp_path):
    config = tiny_config(method="lomo", micro_batch=2, sequential_updates=True, epochs=1)
    ft.finetune(config, tmp_path)
    log = (tmp_path / "train_log.csv").read_text().splitlines()
    assert len(log) == 1 + 4  # 8 examples, one update per micro batch of 2


def test_yaml_config_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"task": "copa", "lr": 0.05, "epochs": 3}))
    config = ft.load_config(str(path), {"lr": 0.01, "epochs": None})
    assert (config.task, config.lr, config.epochs) == ("copa", 0.01, 3)
    path.write_text(yaml.safe_dump({"learning_rate": 0.05}))
    with pytest.raises(ValueError, match="unknown config key"):
        ft.load_config(str(path), {})


@pytest.mark.parametrize("method", ["lomo", "lora+lomo"])
def test_fused_methods_follow_the_schedule_without_scheduler_warnings(tmp_path, method):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ft.finetune(tiny_config(method=method), tmp_path)
    assert not [w for w in caught if "lr_scheduler" in str(w.message)]
    with open(tmp_path / "train_log.csv") as f:
        lrs = [float(row["lr"]) for row in csv.DictReader(f)]
    # 4 updates, warmup 0.25 -> 1 warmup step, then linear decay to 0 (by hand).
    assert lrs == pytest.approx([1e-2, 1e-2, 1e-2 * 2 / 3, 1e-2 / 3])


def test_lora_lomo_step_unscales_the_adapter_gradients_under_fp16_loss_scaling():
    """LOMO scales the loss for fp16; the adapters (fp32, trained by their own optimizer) must
    see the true gradient. Plain SGD on the adapter makes the update lr * gradient, checked
    against autograd on the unscaled loss."""
    from lomo.runtime import Runtime

    torch.manual_seed(0)
    base = torch.nn.Linear(4, 4).half()
    adapter = torch.nn.Parameter(torch.randn(4))
    x = torch.randn(3, 4)

    def loss_fn() -> torch.Tensor:
        return ((base(x.half()).float() + adapter) ** 2).mean()

    expected = torch.autograd.grad(loss_fn(), adapter)[0]
    lomo = LOMO(base, lr=0.0, clip_grad_norm=1.0)
    assert lomo.loss_scale > 1  # fp16 parameters: dynamic loss scaling is on
    adapters = torch.optim.SGD([adapter], lr=1.0)
    before = adapter.detach().clone()
    ft.lora_lomo_step(lomo, adapters, loss_fn, Runtime("single", torch.device("cpu")))
    assert torch.allclose(before - adapter.detach(), expected, rtol=1e-3, atol=1e-6)
