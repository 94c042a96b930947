"""Every model family of tests/tiny_models.py (LLaMA-1 and -3 style, Mistral, Qwen2, Gemma-2,
Phi-3, Granite) through the same checks, each against an independent reference: LOMO against
torch.optim.SGD (and torch's clipping), the chunked loss against the model's own
`model(...).loss` and its gradients, ZeRO-3 on 2 CPU ranks against one process, the
evaluation scorer against one sequence at a time, `lomo finetune` end to end, and `lomo plan`
against the live-tensor census of a real step."""

import copy
import dataclasses
import json

import pytest
import torch
from launch import torchrun
from paths import DATA_DIR, ROOT
from tiny_models import FAMILIES, SLIDING_WINDOW, save_family_checkpoint, tiny_family, token_batches
from transformers import AutoConfig, AutoModelForCausalLM

from lomo import LOMO
from lomo.cli import main
from lomo.loss import ChunkedLossMismatch, causal_lm_loss, check_chunked_loss
from lomo.measure.memory import run_worker as run_memory_worker
from lomo.measure.plan import Setting, count_parameters, load_shape, parameter_sizes, plan
from lomo.measure.workloads import FAMILY_SIZES, build_model
from lomo.train.evaluate import score_candidates
from lomo.train.models import load_model, load_tokenizer

TESTS = ROOT / "tests"
with_each_family = pytest.mark.parametrize("family", list(FAMILIES))


def chunked_loss(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    return causal_lm_loss(model, tokens, None, tokens, chunk_tokens=5)


def model_loss(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    return model(input_ids=tokens, labels=tokens).loss


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[n] - b[n]).abs().max().item() for n in a)


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# --- training: the loss and the optimizer ------------------------------------------------------


@with_each_family
@pytest.mark.parametrize("clip", [None, 0.1])
def test_lomo_with_the_chunked_loss_equals_torch_sgd(family, clip):
    """LOMO on the chunked loss; the reference: torch.optim.SGD on the model's own loss, with
    torch.nn.utils.clip_grad_norm_."""
    model = tiny_family(family)
    reference = copy.deepcopy(model)
    batches = token_batches(3)
    opt = LOMO(model, lr=0.5, clip_grad_norm=clip)
    norms = []
    for tokens in batches:
        opt.step(lambda tokens=tokens: chunked_loss(model, tokens))
        norms.append(opt.last_grad_norm)
    sgd = torch.optim.SGD(reference.parameters(), lr=0.5)
    for tokens in batches:
        sgd.zero_grad()
        model_loss(reference, tokens).backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(reference.parameters(), clip)
        sgd.step()
    assert max_diff(weights(model), weights(tiny_family(family))) > 1e-3  # it trained
    assert max_diff(weights(model), weights(reference)) < 1e-5
    if clip is not None:
        assert max(n.item() for n in norms) > clip  # clipping was active


@with_each_family
def test_chunked_loss_and_gradients_equal_the_models_own(family):
    """Padding, a masked prompt, several chunks; tied families included (Gemma-2, Qwen2,
    LLaMA-3): the embedding's gradient sums the head's and the input's."""
    model = tiny_family(family)
    tokens = token_batches(1, seq_len=20)[0]
    mask = torch.ones_like(tokens)
    mask[0, 15:] = 0  # a padded row
    labels = tokens.masked_fill(mask == 0, -100)
    labels[:, :6] = -100  # a prompt
    reference = copy.deepcopy(model)
    ours = causal_lm_loss(model, tokens, mask, labels, chunk_tokens=7)
    theirs = reference(input_ids=tokens, attention_mask=mask, labels=labels).loss
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)
    ours.backward()
    theirs.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert max_diff(grads, {n: p.grad for n, p in reference.named_parameters()}) < 1e-6
    check_chunked_loss(model, tokens, mask, labels)  # the start-of-run check lets it train


def test_gemma2_soft_capping_bites():
    """The tiny Gemma-2's cap changes its loss: without it the chunked loss would differ."""
    capped = tiny_family("gemma2")
    uncapped = tiny_family("gemma2", final_logit_softcapping=None)
    tokens = token_batches(1)[0]
    assert abs(model_loss(capped, tokens) - model_loss(uncapped, tokens)) > 1e-3


def test_the_check_refuses_a_family_whose_logits_it_does_not_know():
    """A LLaMA whose config carries a soft cap its forward never applies: the chunked loss caps,
    the model's own loss does not, and the check stops naming the model class and type."""
    model = tiny_family("llama", final_logit_softcapping=0.5)
    tokens = token_batches(1)[0]
    with pytest.raises(ChunkedLossMismatch, match=r"LlamaForCausalLM \(model_type llama\)"):
        check_chunked_loss(model, tokens, None, tokens)


# --- evaluation ---------------------------------------------------------------------------------


def one_sequence_scores(model, groups) -> list[list[tuple[float, int]]]:
    """The reference scorer: every candidate after its whole prompt, one unpadded sequence at a
    time, no cache."""
    results = []
    for prompt, answers in groups:
        row = []
        for answer in answers:
            with torch.no_grad():
                logits = model(torch.tensor([prompt + answer])).logits[0]
            # Logits at position t predict token t + 1.
            logprobs = torch.log_softmax(logits[len(prompt) - 1 : -1].double(), dim=-1)
            total = logprobs[torch.arange(len(answer)), torch.tensor(answer)].sum().item()
            row.append((total, len(answer)))
        results.append(row)
    return results


def scoring_groups() -> list[tuple[list[int], list[list[int]]]]:
    """Prompts of 3 to 49 tokens (most longer than the sliding window), two of them sharing a
    40-token prefix (run once), answers of 1 to 12 tokens."""
    generator = torch.Generator().manual_seed(0)

    def ids(n: int) -> list[int]:
        return torch.randint(3, 128, (n,), generator=generator).tolist()

    shared = ids(40)
    return [
        (shared + ids(5), [ids(1), ids(4)]),
        (shared + ids(9), [ids(3), ids(2), ids(1)]),
        (ids(20), [ids(6), ids(1)]),
        (ids(20), [ids(2), ids(2)]),
        (ids(3), [ids(2), ids(12)]),
    ]


@with_each_family
@pytest.mark.parametrize("batch_size", [1, 3])
def test_scores_equal_one_sequence_at_a_time(family, batch_size):
    model = tiny_family(family).eval()
    groups = scoring_groups()
    assert max(len(prompt) for prompt, _ in groups) > SLIDING_WINDOW
    expected = one_sequence_scores(model, groups)
    scored = score_candidates(model, groups, batch_size, pad_token_id=2)
    for ours, reference in zip(scored, expected, strict=True):
        assert [n for _, n in ours] == [n for _, n in reference]
        assert [s for s, _ in ours] == pytest.approx([s for s, _ in reference], abs=1e-5)


# --- checkpoints: loading, ZeRO-3, lomo finetune ------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("tiny-llama")  # SmolLM2's vocabulary


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tokenizer) -> dict[str, str]:
    """Each family's random checkpoint with SmolLM2's tokenizer, as `lomo finetune --model`
    reads it."""
    root = tmp_path_factory.mktemp("families")
    return {f: str(save_family_checkpoint(f, root / f, tokenizer)) for f in FAMILIES}


@with_each_family
def test_default_attention_is_one_the_family_supports(checkpoints, family):
    model = load_model(checkpoints[family])  # the default: sdpa
    expected = "eager" if family == "gemma2" else "sdpa"  # Gemma-2's class: no sdpa
    assert model.config._attn_implementation == expected


@pytest.mark.e2e
def test_zero3_on_two_ranks_equals_one_process(tmp_path, checkpoints):
    """One 2-rank launch for every family: the partitions filled from the safetensors files
    hold the checkpoint, and LOMO with clipping on the chunked loss under ZeRO-3 ends where one
    process ends on the whole batch."""
    from families_worker import CLIP, LR, STEPS

    out = tmp_path / "results.pt"
    done = torchrun(
        [str(TESTS / "families_worker.py"), json.dumps(checkpoints), str(out)],
        timeout=600,
        cwd=TESTS,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    results = torch.load(out, weights_only=False)
    for family, folder in checkpoints.items():
        model = load_model(folder, attn_implementation="eager")
        assert max_diff(results[family]["initial"], weights(model)) == 0, family
        opt = LOMO(model, lr=LR, clip_grad_norm=CLIP)
        for tokens in token_batches(STEPS):
            opt.step(lambda model=model, tokens=tokens: chunked_loss(model, tokens))
        final = results[family]["final"]
        assert max_diff(final, results[family]["initial"]) > 1e-3, family
        assert max_diff(final, weights(model)) < 1e-5, family


def finetune_flags(model: str, out) -> list[str]:
    flags = ["finetune", "--model", model, "--method", "lomo", "--task", "rte"]
    flags += ["--data-dir", str(DATA_DIR), "--protocol", "val-split", "--train-size", "8"]
    flags += ["--test-size", "4", "--max-length", "64", "--epochs", "1", "--global-batch", "4"]
    return [*flags, "--micro-batch", "4", "--lr", "1e-2", "--eval-batch", "8", "--out", str(out)]


@with_each_family
def test_lomo_finetune_end_to_end(tmp_path, checkpoints, family):
    """With the default attention (sdpa, eager for Gemma-2) and the default chunked loss."""
    if not DATA_DIR.is_dir():
        pytest.skip(f"the SuperGLUE data is not at {DATA_DIR}")
    main(finetune_flags(checkpoints[family], tmp_path))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["n_eval"] == 4 and len(metrics["per_epoch"]) == 1
    log = (tmp_path / "train_log.csv").read_text().splitlines()
    assert len(log) == 1 + 2  # 8 examples, 2 updates


def test_lomo_finetune_stops_on_a_loss_it_cannot_chunk(tmp_path, tokenizer):
    if not DATA_DIR.is_dir():
        pytest.skip(f"the SuperGLUE data is not at {DATA_DIR}")
    folder = save_family_checkpoint(
        "llama", tmp_path / "model", tokenizer, final_logit_softcapping=0.5
    )
    with pytest.raises(SystemExit) as stopped:
        main(finetune_flags(str(folder), tmp_path / "run"))
    message = str(stopped.value.code)
    assert message.startswith("lomo finetune: the chunked loss is ") and "\n" not in message
    assert "LlamaForCausalLM (model_type llama)" in message and "--no-chunked-loss" in message
    main([*finetune_flags(str(folder), tmp_path / "plain"), "--no-chunked-loss"])
    assert (tmp_path / "plain" / "metrics.json").is_file()


# --- lomo plan and lomo memory ------------------------------------------------------------------

# The validation size: large enough that the census is not all overhead, small enough to run in
# a second; a vocabulary of 2000 makes the loss the peak, one of 256 a layer's backward.
PLAN_SIZES = dict(hidden_size=128, intermediate_size=344)
PLAN_CASES = [("bf16", "eager", False, 2000), ("bf16", "sdpa", True, 256)]


@with_each_family
def test_plan_counts_the_parameters_of_each_family(tmp_path, family):
    folder = save_family_checkpoint(family, tmp_path, vocab=2000, **PLAN_SIZES)
    model = load_model(str(folder))
    assert count_parameters(load_shape(str(folder))) == sum(p.numel() for p in model.parameters())


@with_each_family
@pytest.mark.parametrize("case", PLAN_CASES, ids=lambda c: f"{c[0]}-{c[1]}-ac{c[2]}")
def test_plan_within_10_percent_of_lomo_memory(tmp_path, family, case):
    """`lomo memory`'s measurement (its worker: the census of a LOMO step on the checkpoint,
    whole-batch logits) against `lomo plan` on the checkpoint's config.json."""
    dtype, attn, ac, vocab = case
    attn = "eager" if family == "gemma2" else attn  # Gemma-2 has no sdpa
    torch.set_num_threads(2)
    folder = save_family_checkpoint(family, tmp_path, vocab=vocab, **PLAN_SIZES)
    spec = dict(device="cpu", model=str(folder), dtype=dtype, attn=attn, layers=None, ac=ac)
    spec |= dict(batch=2, seq=64, optimizer="lomo", clip=False, chunked_loss=False)
    measured = run_memory_worker(spec)["census_peak"]
    setting = Setting(seq=64, batch=2, dtype=dtype, ac=ac, attn=attn, deepspeed=False)
    predicted = plan(load_shape(str(folder)), setting)["peak"]
    assert abs(predicted / measured - 1) <= 0.10, (predicted, measured)


# Published parameter counts (the models' safetensors metadata / model cards).
PUBLISHED_PARAMETERS = {
    "llama2-7b": 6_738_415_616,
    "llama2-13b": 13_015_864_320,
    "llama2-70b": 68_976_648_192,
    "llama3-8b": 8_030_261_248,
    "llama3-70b": 70_553_706_496,
    "llama3.2-1b": 1_235_814_400,
    "qwen2.5-0.5b": 494_032_768,
    "qwen2.5-1.5b": 1_543_714_304,
    "qwen2.5-7b": 7_615_616_512,
    "qwen2.5-14b": 14_770_033_664,
}


@pytest.mark.parametrize("size", list(FAMILY_SIZES))
def test_named_sizes_have_their_published_parameter_counts(size):
    assert count_parameters(load_shape(size)) == PUBLISHED_PARAMETERS[size]
    # and transformers builds that many from the same config fields (on the meta device)
    config = AutoConfig.for_model(**FAMILY_SIZES[size])
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMETERS[size]


def test_plan_of_a_named_size_prints_its_hub_command(capsys):
    main(["plan", "qwen2.5-7b", "--gpus", "2"])
    out = capsys.readouterr().out
    assert out.startswith("qwen2.5-7b: 7.62B parameters, 28 layers, hidden 3584")
    assert "--model=Qwen/Qwen2.5-7B" in out.strip().splitlines()[-1]
    main(["plan", "meta-llama/Meta-Llama-3-8B"])  # the hub id names the same size
    assert capsys.readouterr().out.startswith("llama3-8b: 8.03B parameters")


def test_plan_refuses_a_model_type_without_formulas_in_one_line(tmp_path):
    config = dict(PLAN_SIZES, model_type="gpt_neox", num_hidden_layers=2)
    (tmp_path / "config.json").write_text(json.dumps(config | {"num_attention_heads": 4}))
    with pytest.raises(SystemExit) as refused:
        main(["plan", str(tmp_path)])
    message = str(refused.value.code)
    assert "\n" not in message
    assert message.startswith(f"lomo plan: {tmp_path}: model_type 'gpt_neox' has no memory")
    assert "(it plans llama, mistral, qwen2, gemma2, phi3, granite)" in message


def test_plan_reads_the_architecture_from_the_config(tmp_path):
    gemma2 = load_shape(str(save_family_checkpoint("gemma2", tmp_path / "gemma2")))
    assert (gemma2.head_size, gemma2.norms_per_layer, gemma2.tied) == (16, 4, True)
    assert gemma2.attn_softcapping and gemma2.final_softcapping
    qwen2 = load_shape(str(save_family_checkpoint("qwen2", tmp_path / "qwen2")))
    assert (qwen2.qkv_bias, qwen2.o_bias, qwen2.kv_heads) == (True, False, 2)
    phi3 = load_shape(str(save_family_checkpoint("phi3", tmp_path / "phi3")))
    assert phi3.fused_projections and "layer.qkv" in parameter_sizes(phi3)
    biased = save_family_checkpoint("llama", tmp_path / "b", attention_bias=True, mlp_bias=True)
    model = load_model(str(biased))
    assert count_parameters(load_shape(str(biased))) == sum(p.numel() for p in model.parameters())


def test_lomo_memory_builds_a_named_size_at_any_depth():
    """The model `lomo memory --model qwen2.5-0.5b --layers 1 2` measures: the named size's
    architecture with one decoder layer, as the planner counts it."""
    model = build_model("qwen2.5-0.5b", torch.bfloat16, "sdpa", num_layers=1)
    one_layer = dataclasses.replace(load_shape("qwen2.5-0.5b"), layers=1)
    assert sum(p.numel() for p in model.parameters()) == count_parameters(one_layer)
    assert model.model.layers[0].self_attn.q_proj.bias is not None
