"""`lomo plan`: hand-computed cases, the planner against the live-tensor census of real training
steps, the fit verdict, the printed command against `lomo finetune`'s own parser, bad input."""

import argparse
import dataclasses
import json
import shlex
import subprocess
import sys

import pytest
import torch
from paths import ROOT
from transformers import LlamaConfig, LlamaForCausalLM

from lomo import LOMO
from lomo.cli import build_parser, main
from lomo.loss import default_chunk_tokens
from lomo.measure.census import MemoryCensus
from lomo.measure.plan import (
    GIB,
    Setting,
    Shape,
    count_parameters,
    finetune_command,
    llama_config,
    load_shape,
    plan,
)
from lomo.train import finetune
from lomo.train.config import FinetuneConfig


def test_llama_7b_parameters_by_hand():
    # embedding and head 32000 x 4096 each; per layer 4 attention matrices 4096^2, 3 MLP
    # matrices 4096 x 11008 and 2 norms; the final norm
    per_layer = 4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096
    expected = 2 * 32000 * 4096 + 32 * per_layer + 4096
    assert expected == 6_738_415_616  # LLaMA-7B's published count
    assert count_parameters(load_shape("7b")) == expected
    result = plan(load_shape("7B"), Setting(dtype="fp16", deepspeed=False))
    assert result["table1"]["parameters"] == 2 * expected  # Table 1's 12.55 GB
    assert round(2 * expected / GIB, 2) == 12.55
    assert result["largest_gradient"] == 2 * 32000 * 4096  # Table 1's 0.24 GB


def test_tiny_config_components_by_hand():
    shape = Shape("tiny", hidden=8, intermediate=16, layers=2, heads=2, kv_heads=2, vocab=32)
    setting = Setting(seq=4, batch=2, dtype="fp32", ac=False, attn="sdpa", deepspeed=False)
    loss = plan(shape, setting)["phases"]["loss"]
    tokens = 8
    params = 32 * 8 * 2 + 8 + 2 * (4 * 8 * 8 + 3 * 8 * 16 + 2 * 8)  # 1832
    assert loss["parameters"] == 4 * params
    # per token and layer, fp32: 2 norms x (4h + 4h), 6 attention tensors x 4h, 4 MLP x 4I,
    # sdpa's log-sum-exp 4 bytes x 2 heads, 8 bytes of positions
    layer = 2 * (32 + 32) + 6 * 32 + 4 * 64 + 4 * 2 + 8
    head = 4 * 4 * 8  # the final norm: 4 p h
    assert loss["activations"] == tokens * (2 * layer + head)
    assert loss["logits"] == 12 * tokens * 32  # full logits, 12 bytes each
    assert loss["gathered"] == 0 and loss["gradients"] == 0 and loss["optimizer_states"] == 0


def test_zero3_partitions_and_optimizer_states_by_hand():
    shape = load_shape("13b")
    n = count_parameters(shape)
    lomo = plan(shape, Setting(gpus=2, dtype="fp16"))
    # every parameter's half, plus a resident copy of the 2 x 40 + 1 norm vectors (persistent)
    persistent = (2 * 40 + 1) * 5120
    assert abs(lomo["phases"]["loss"]["parameters"] - 2 * (n / 2 + persistent)) < 2 * 2 * 400
    adamw = plan(shape, Setting(method="adamw", gpus=8, dtype="fp16"))
    assert adamw["phases"]["loss"]["optimizer_states"] == 12 * -(-n // 8)  # master + 2 moments
    assert plan(shape, Setting(method="sgd", gpus=8))["phases"]["loss"]["optimizer_states"] == (
        4 * -(-n // 8)
    )


def test_chunked_loss_holds_one_chunk_of_logits():
    shape, tokens = load_shape("7b"), 8 * 512
    full = plan(shape, Setting(deepspeed=False))["phases"]["loss"]["logits"]
    chunked = plan(shape, Setting(deepspeed=False, loss_chunk=1024))["phases"]["loss"]["logits"]
    assert full == 12 * tokens * 32000
    # one chunk of 1024 tokens' logits, plus the fp32 hidden-state gradient of the whole batch
    assert chunked == 12 * 1024 * 32000 + 4 * 4096 * tokens


def census_peak(config: LlamaConfig, dtype: torch.dtype, tokens: torch.Tensor, ac: bool) -> int:
    """The census peak of one LOMO step (after a warm-up step), as `lomo memory` measures it."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(dtype).train()
    model.config.use_cache = False
    if ac:
        model.activation_checkpointing_enable({"use_reentrant": True})
    census = MemoryCensus(model)
    opt = LOMO(model, lr=1e-3)
    opt.step(lambda: model(input_ids=tokens, labels=tokens).loss)
    with census:
        opt.step(lambda: model(input_ids=tokens, labels=tokens).loss)
    census.remove_hooks()
    return census.peak


@pytest.mark.parametrize(
    "dtype, attn, ac, vocab",
    [("bf16", "eager", False, 2000), ("fp32", "sdpa", False, 2000), ("bf16", "sdpa", True, 256)],
)
def test_plan_matches_the_census_of_a_real_step(dtype, attn, ac, vocab):
    """One process (no ZeRO): the planner against live tensor bytes of a real LOMO step, in
    configs where the loss (large vocabulary) or a layer's backward (small one) is the peak."""
    torch.set_num_threads(2)
    shape = Shape("small", hidden=128, intermediate=344, layers=2, heads=4, kv_heads=4, vocab=vocab)
    config = llama_config(shape, attn)
    tokens = torch.randint(0, vocab, (2, 64), generator=torch.Generator().manual_seed(0))
    torch_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    measured = census_peak(config, torch_dtype, tokens, ac)
    setting = Setting(seq=64, batch=2, dtype=dtype, ac=ac, attn=attn, deepspeed=False)
    predicted = plan(shape, setting)["peak"]
    assert abs(predicted / measured - 1) < 0.05, (predicted, measured)


def run_cli(capsys, *args: str) -> str:
    main(["plan", *args])
    return capsys.readouterr().out


def verdict(capsys, *args: str) -> dict:
    """`lomo plan ARGS --json`: the JSON verdict, its last line."""
    return json.loads(run_cli(capsys, *args, "--json").strip().splitlines()[-1])


def test_fits_and_does_not_fit(capsys):
    # LLaMA-7B, LOMO, fp16, batch 8 x 512, AC: about 15.6 GiB + 1 GiB reserve
    fits = verdict(capsys, "7b", "--memory", "24")
    assert fits["fits"] and 15 < fits["peak_gib"] < 16.5
    assert not verdict(capsys, "7b", "--memory", "16")["fits"]
    assert "does NOT fit in 16 GiB" in run_cli(capsys, "7b", "--memory", "16")
    assert "fits in 24 GiB per GPU" in run_cli(capsys, "7b", "--memory", "24")
    # the reserve counts: the same peak with no reserve fits in 16.5 GiB
    assert verdict(capsys, "7b", "--memory", "16.5", "--reserve", "0")["fits"]
    # 65B on 8 GPUs of 24 GB fits (the paper ran it on RTX 3090s); on 4 it does not
    table2 = ("--memory", "24", "--seq", "1024", "--batch", "1")
    assert verdict(capsys, "65b", "--gpus", "8", *table2)["fits"]
    assert not verdict(capsys, "65b", "--gpus", "4", *table2)["fits"]


def finetune_parser() -> argparse.ArgumentParser:
    return build_parser(["finetune"])


@pytest.mark.parametrize("method, gpus", [("lomo", 4), ("adalomo", 1), ("lora", 1), ("sgd", 1)])
def test_printed_command_parses_with_the_finetune_parser(capsys, method, gpus):
    out = run_cli(
        capsys,
        "13b",
        "--method",
        method,
        "--gpus",
        str(gpus),
        "--dtype",
        "bf16",
        "--seq",
        "256",
        "--batch",
        "2",
        "--no-activation-checkpointing",
        "--out",
        "r/x",
    )
    command = shlex.split(out.strip().splitlines()[-1])
    if method != "sgd":  # under ZeRO-3, through torchrun
        assert command[:4] == ["python", "-m", "torch.distributed.run", f"--nproc_per_node={gpus}"]
        flags = command[command.index("lomo.cli") + 1 :]
    else:
        assert command[0] == "lomo"
        flags = command[1:]
    args = finetune_parser().parse_args(flags)
    overrides = {f: getattr(args, f) for f in vars(args) if f not in ("command", "func")}
    assert args.model == "huggyllama/llama-13b" and args.method == method
    assert args.max_length == 256 and args.global_batch == 2 * gpus == args.micro_batch
    assert args.dtype == "bf16" and args.activation_checkpointing is False
    assert (args.deepspeed == "config/deepspeed/zero3.json") == (method != "sgd")
    # and the run's own validation accepts it
    fields = finetune.FinetuneConfig.__annotations__
    config = finetune.load_config(None, {k: v for k, v in overrides.items() if k in fields})
    assert config.method == method


def test_zero3_sizes_come_from_the_deepspeed_config(capsys, tmp_path):
    # the repository's zero3.json: a 5e7-element prefetch bucket, gathered twice in fp16
    def gathered_in_forward(out: str) -> float:  # the first column of the "gathered" row
        return float(out.split("\ngathered")[1].split()[0])

    assert gathered_in_forward(run_cli(capsys, "7b")) == round(2 * 50_000_000 * 2 / GIB, 3)
    config = {"zero_optimization": {"stage": 3, "stage3_prefetch_bucket_size": 1_000_000}}
    (tmp_path / "ds.json").write_text(json.dumps(config))
    smaller = run_cli(capsys, "7b", "--deepspeed-config", str(tmp_path / "ds.json"))
    assert gathered_in_forward(smaller) == round(2 * 1_000_000 * 2 / GIB, 3)
    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    with pytest.raises(SystemExit, match="not a ZeRO stage 3 config"):
        main(["plan", "7b", "--deepspeed-config", str(tmp_path / "ds.json")])


def test_data_parallel_without_zero3_is_the_one_gpu_footprint(capsys):
    shape = load_shape("7b")
    one = plan(shape, Setting(method="adamw", gpus=1, deepspeed=False))
    four = plan(shape, Setting(method="adamw", gpus=4, deepspeed=False))
    assert four["peak"] == one["peak"] and not four["zero3"]
    command = shlex.split(
        run_cli(capsys, "7b", "--method", "sgd", "--gpus", "2", "--no-deepspeed")
        .strip()
        .splitlines()[-1]
    )
    assert command[3] == "--nproc_per_node=2" and not any("deepspeed" in c for c in command)


def test_no_command_where_lomo_finetune_cannot_run_it():
    setting = Setting(method="adamw", gpus=8)
    assert finetune_command(load_shape("7b"), setting, "rte", "out") is None


def test_hugging_face_config(tmp_path):
    config = dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        tie_word_embeddings=True,
    )
    (tmp_path / "config.json").write_text(json.dumps(config))
    shape = load_shape(str(tmp_path))
    assert (shape.kv_heads, shape.vocab, shape.tied) == (8, 128256, True)
    # tied: one embedding matrix; GQA: k and v are 2048 x 512
    per_layer = 2 * 2048 * 2048 + 2 * 2048 * 512 + 3 * 2048 * 8192 + 2 * 2048
    assert count_parameters(shape) == 128256 * 2048 + 16 * per_layer + 2048


@pytest.mark.parametrize(
    "args, message",
    [
        (["7x"], "lomo plan: unknown size '7x': expected one of 7b, 13b, 30b, 65b"),
        (["7b", "--gpus", "0"], "lomo plan: error: argument --gpus: expected a positive integer"),
        (["7b", "--batch", "0"], "lomo plan: error: argument --batch: expected a positive integer"),
        (
            ["7b", "--memory", "0"],
            "lomo plan: error: argument --memory: expected a positive number",
        ),
        (
            ["7b", "--loss-chunk", "0"],
            "lomo plan: error: argument --loss-chunk: expected a positive",
        ),
    ],
)
def test_bad_input_is_one_line(capsys, args, message):
    """A flag out of its range is argparse's usage error (status 2); the rest status 1."""
    with pytest.raises(SystemExit) as exit_info:
        main(["plan", *args])
    text = str(exit_info.value.code) if exit_info.value.code != 2 else capsys.readouterr().err
    assert text.splitlines()[-1].startswith(message)


def test_config_without_llama_fields_is_one_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 64}))
    with pytest.raises(SystemExit) as exit_info:
        main(["plan", str(tmp_path / "config.json")])
    assert "not a LLaMA-style config" in str(exit_info.value.code)


@pytest.mark.slow
def test_plan_within_10_percent_of_a_two_rank_zero3_peak():
    """Validation (a) for one shape: per-rank peak under 2-rank ZeRO-3 (torchrun, gloo)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import plan_validation

    (row,) = plan_validation.cpu_rows({"cpu-b": plan_validation.measure("cpu-b")})
    assert abs(row["ratio"] - 1) <= 0.10, row


def test_module_entry_point_is_lomo_plan():
    """`python -m lomo.measure.plan ARGS` (scripts/gpu_acceptance.sh) runs `lomo plan ARGS`."""
    done = subprocess.run(
        [sys.executable, "-m", "lomo.measure.plan", "7b", "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1])["fits"]


# --- evaluation --------------------------------------------------------------------------------


def plan_validation():
    sys.path.insert(0, str(ROOT / "scripts"))
    import plan_validation

    return plan_validation


@pytest.mark.parametrize("name", ["eval-a", "eval-b"])
def test_evaluation_plan_matches_the_census_of_the_scorer(name):
    """The evaluation peak against live tensor bytes of lomo.train.evaluate's scorer at two
    shapes: the answer forward's cache copies (sdpa, bf16), and the prompts' forward under a
    token budget (eager scores, fp32, grouped-query attention)."""
    torch.set_num_threads(2)
    validation = plan_validation()
    shape, setting, n_prompts = validation.EVAL_SHAPES[name]
    measured = validation.eval_census_peak(shape, setting, n_prompts)
    result = plan(shape, setting)["evaluation"]
    assert abs(result["peak"] / measured - 1) < 0.10, (result["peak"], measured)
    expected_phase = {"eval-a": "eval answers", "eval-b": "eval prompts"}[name]
    assert result["peak_phase"] == expected_phase


def test_evaluation_cache_by_hand():
    # LLaMA-7B fp16: 2 x 32 layers x 4096 x 2 bytes = 0.5 MiB of keys and values per token
    shape = load_shape("7b")
    setting = Setting(seq=1024, dtype="fp16", deepspeed=False, eval_batch=16)
    evaluation = plan(shape, setting)["evaluation"]
    assert evaluation["kv_bytes_per_token"] == 2**19
    # no budget: 16 prompts of 1024 tokens, and their 32 candidates (2 tokens each: one runs on
    # a copy of its prompt's cache) in one answer forward of at most 4 x 16
    assert evaluation["batches"] == {"prompts": 16, "answers": 32, "width": 1024, "steps": 1}
    answers = evaluation["phases"]["eval answers"]
    assert answers["prompt_cache"] == 16 * 1024 * 2**19
    assert answers["answer_cache"] >= 32 * 1024 * 2**19
    # a budget of 2048 tokens: 2 prompts of 1024, one candidate (1025 tokens) per forward; the
    # worst width is just under 1024 (2 prompts and 2 candidates of 1022 + 1 tokens)
    budget = plan(shape, dataclasses.replace(setting, eval_tokens=2048))["evaluation"]
    assert budget["batches"]["prompts"] * budget["batches"]["width"] <= 2048
    assert budget["batches"]["answers"] * (budget["batches"]["width"] + 1) <= 2048
    assert budget["phases"]["eval answers"]["prompt_cache"] <= 2048 * 2**19


def test_defaults_are_lomo_finetunes(capsys):
    """The chunked loss (lomo finetune's default, lomo.loss's chunk size), eval_batch from
    FinetuneConfig, and the printed command says the evaluation budget it was planned with."""
    shape = load_shape("7b")
    out = run_cli(capsys, "7b", "--memory", "24")
    chunk = default_chunk_tokens(8 * 512, 4096, 32000)
    assert f"loss chunks of {chunk}" in out
    command = shlex.split(out.strip().splitlines()[-1])
    flags = command[command.index("lomo.cli") + 1 :]
    args = finetune_parser().parse_args(flags)
    assert args.chunked_loss is None  # lomo finetune's default: chunked
    assert args.eval_batch == FinetuneConfig.eval_batch
    # the budget printed is the one planned, and it fits
    fits = verdict(capsys, "7b", "--memory", "24", "--eval-tokens", str(args.eval_tokens))
    assert fits["fits"] and fits["eval_tokens"] == args.eval_tokens
    full = run_cli(capsys, "7b", "--no-chunked-loss")
    assert "full logits" in full and "--no-chunked-loss" in full.strip().splitlines()[-1]
    chunked = plan(shape, Setting(chunked_loss=True))["phases"]["loss"]["logits"]
    assert chunked == plan(shape, Setting(loss_chunk=chunk))["phases"]["loss"]["logits"]
    # LoRA under ZeRO-3: lomo finetune falls back to the full logits (frozen partitioned head)
    lora = plan(shape, Setting(method="lora", chunked_loss=True))
    assert lora["setting"].loss_chunk is None
    one_process = Setting(method="lora", chunked_loss=True, deepspeed=False)
    assert plan(shape, one_process)["setting"].loss_chunk == chunk


def test_check_refuses_in_one_line_with_the_largest_setting_that_fits(capsys):
    args = ["plan", "7b", "--memory", "24", "--seq", "1024", "--check"]
    with pytest.raises(SystemExit) as refused:
        main([*args, "--eval-tokens", "none"])
    text = str(refused.value.code)
    assert "\n" not in text and "does not fit in 24 GiB" in text
    largest = int(text.split("largest eval_tokens that fits: ")[1].split()[0].rstrip(";"))
    main([*args, "--eval-tokens", str(largest)])  # fits: no exit
    with pytest.raises(SystemExit, match="evaluation needs"):
        main([*args, "--eval-tokens", str(largest + 1100)])
    # training: LoRA 7B, 16 x 1024 on one 24 GB GPU (the paper profile before it accumulated)
    lora = ["--method", "lora", "--dtype", "bf16", "--attn", "sdpa", "--batch", "16"]
    with pytest.raises(SystemExit) as refused:
        main([*args, *lora, "--eval-tokens", "1024"])
    text = str(refused.value.code)
    assert "training needs 25.1" in text and "largest micro batch that fits: 14 per GPU" in text
    main([*args, *lora, "--eval-tokens", "1024", "--batch", "14"])
    capsys.readouterr()
