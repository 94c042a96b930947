"""The chunked linear + cross-entropy loss against Hugging Face's own `model(...).loss`:
the loss and every parameter's gradient (tied embeddings, LoRA, activation checkpointing,
ZeRO-3 on two ranks), LOMO's hook seeing the head's full gradient once, and the full logits
never being allocated."""

import copy
import math
import weakref
from pathlib import Path

import pytest
import torch
from launch import torchrun
from loss_worker import rank_batch
from tiny_models import tiny_llama, token_batches
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from transformers import LlamaForCausalLM

from lomo import LOMO
from lomo import loss as loss_module
from lomo.loss import IGNORE_INDEX, causal_lm_loss, default_chunk_tokens

TESTS = Path(__file__).resolve().parent


def fine_tuning_batch(seed: int = 1) -> dict[str, torch.Tensor]:
    """Right-padded rows of different lengths, the prompt part of each label ignored."""
    (input_ids,) = token_batches(1, seed=seed)
    attention_mask = torch.ones_like(input_ids)
    labels = input_ids.clone()
    for row, (prompt, padding) in enumerate([(3, 0), (5, 2), (1, 4), (7, 1)]):
        labels[row, :prompt] = IGNORE_INDEX
        if padding:
            attention_mask[row, -padding:] = 0
            labels[row, -padding:] = IGNORE_INDEX
    return dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels)


def loss_and_grads(model, batch, chunked: bool, chunk_tokens=None, seed: int = 0):
    torch.manual_seed(seed)  # the same dropout masks on both sides
    loss = causal_lm_loss(model, **batch, chunk_tokens=chunk_tokens, chunked=chunked)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def assert_same_loss_and_grads(model, batch, chunk_tokens=None):
    """Chunked on `model` against the standard path on an identical copy."""
    reference = copy.deepcopy(model)
    expected_loss, expected = loss_and_grads(reference, batch, chunked=False)
    loss, grads = loss_and_grads(model, batch, chunked=True, chunk_tokens=chunk_tokens)
    assert grads.keys() == expected.keys() and grads
    torch.testing.assert_close(loss, expected_loss, rtol=1e-6, atol=0)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("chunk_tokens", [None, 1, 5, 1000])
@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_loss_and_gradients_equal_hugging_face(tie, chunk_tokens):
    model = tiny_llama(tie=tie)
    assert_same_loss_and_grads(model, fine_tuning_batch(), chunk_tokens)


def test_labels_default_to_inputs_loss_as_in_the_plain_call():
    (tokens,) = token_batches(1)
    model = tiny_llama()
    loss = causal_lm_loss(model, tokens, None, tokens, chunk_tokens=7)
    # By hand: log-softmax of the full logits, next-token targets, mean over all positions.
    logits = model(input_ids=tokens).logits[:, :-1].float()
    expected = -logits.log_softmax(-1).gather(-1, tokens[:, 1:, None]).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_activation_checkpointing(use_reentrant):
    model = tiny_llama(tie=True)
    model.activation_checkpointing_enable({"use_reentrant": use_reentrant})
    assert_same_loss_and_grads(model.train(), fine_tuning_batch(), chunk_tokens=5)


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], ["q_proj", "lm_head"]])
def test_lora(targets):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(3)
    # Dropout on the attention adapters: the decoder consumes the RNG as the plain call does.
    dropout = 0.0 if "lm_head" in targets else 0.2
    config = LoraConfig(r=2, lora_alpha=16, lora_dropout=dropout, target_modules=targets)
    model = get_peft_model(tiny_llama(), config).train()
    for name, param in model.named_parameters():
        if "lora_B" in name:  # B starts at zero: give the adapters a non-zero effect
            param.data.normal_(0, 0.1)
    assert_same_loss_and_grads(model, fine_tuning_batch(), chunk_tokens=5)


def test_lomo_hook_gets_the_full_head_gradient_once():
    """LOMO updates the (tied) head weight once per step, with the whole summed gradient:
    the same step as torch SGD after a plain backward."""
    model = tiny_llama(tie=True)
    reference = copy.deepcopy(model)
    calls = []
    model.lm_head.weight.register_post_accumulate_grad_hook(lambda p: calls.append(1))
    batch = fine_tuning_batch()
    LOMO(model, lr=0.1).step(lambda: causal_lm_loss(model, **batch, chunk_tokens=3))
    assert len(calls) == 1
    reference(**batch).loss.backward()
    torch.optim.SGD(reference.parameters(), lr=0.1).step()
    for ours, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_tied_steps_with_the_norm_pass_equal_clipped_sgd_and_leave_no_hook():
    """Two backward passes per graph (norm, then update) and several steps: the tied head's
    in-place sum runs in each pass, and its per-graph hook goes with the graph."""
    model = tiny_llama(tie=True)
    reference = copy.deepcopy(model)
    batches = token_batches(3)
    opt = LOMO(model, lr=0.5, clip_grad_norm=1.0)
    for tokens in batches:
        opt.step(lambda tokens=tokens: causal_lm_loss(model, tokens, None, tokens, chunk_tokens=5))
    sgd = torch.optim.SGD(reference.parameters(), lr=0.5)
    for tokens in batches:
        sgd.zero_grad()
        reference(input_ids=tokens, labels=tokens).loss.backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
        sgd.step()
    for ours, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    assert not model.lm_head.weight._backward_hooks


def test_no_label_gives_nan_as_hugging_face():
    model = tiny_llama()
    batch = fine_tuning_batch()
    batch["labels"] = torch.full_like(batch["labels"], IGNORE_INDEX)
    assert math.isnan(model(**batch).loss.item())
    assert math.isnan(causal_lm_loss(model, **batch).item())


def test_bad_input_errors():
    model = tiny_llama()
    batch = fine_tuning_batch()
    with pytest.raises(ValueError, match="chunk_tokens must be >= 1"):
        causal_lm_loss(model, **batch, chunk_tokens=0)
    with pytest.raises(ValueError, match="differ in shape"):
        causal_lm_loss(model, batch["input_ids"], None, batch["labels"][:, 1:])


def test_default_chunk_holds_no_more_values_than_the_hidden_states():
    assert default_chunk_tokens(1024, 576, 49152) == 12  # SmolLM2-135M, batch 4 x 256
    assert default_chunk_tokens(4096, 4096, 32000) == 524  # LLaMA-7B, batch 8 x 512
    assert default_chunk_tokens(10, 32, 128) == 2
    assert default_chunk_tokens(1, 32, 128) == 1


# --- memory: the logits of the whole batch never exist ------------------------------------------


class LargestTensor(TorchDispatchMode):
    """The largest number of elements of any tensor an operator creates."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self.largest = max(self.largest, tensor.numel())
        return out


def wide_vocabulary_llama(tie: bool = True) -> LlamaForCausalLM:
    """Vocabulary 64x the hidden size, as in SmolLM2 (49152 / 576 = 85)."""
    return tiny_llama(tie=tie, vocab=2048)


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "plain"])
def test_full_logits_never_allocated(chunked):
    """The plain path is the control: it does create a tokens x vocab tensor."""
    model = wide_vocabulary_llama()
    tokens = torch.randint(0, 2048, (4, 32), generator=torch.Generator().manual_seed(0))
    logits_numel = tokens.numel() * model.config.vocab_size
    weight_numel = model.lm_head.weight.numel()
    assert logits_numel == 4 * weight_numel  # the logits would be the largest tensor
    with LargestTensor() as probe:
        causal_lm_loss(model, tokens, None, tokens, chunked=chunked).backward()
    if chunked:
        assert probe.largest == weight_numel  # the head's gradient; no logits that large
    else:
        assert probe.largest >= logits_numel


class LiveOfSize(TorchDispatchMode):
    """The most tensors of exactly `nbytes` that operators created and that were alive at once."""

    def __init__(self, nbytes: int, params: list[torch.Tensor]) -> None:
        super().__init__()
        self.nbytes = nbytes
        self.params = {p.untyped_storage().data_ptr() for p in params}  # views of a weight
        self.alive: set[int] = set()
        self.most = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                key = id(storage)
                new = key not in self.alive and storage.data_ptr() not in self.params
                if storage.nbytes() == self.nbytes and new:
                    self.alive.add(key)
                    weakref.finalize(storage, self.alive.discard, key)
                    self.most = max(self.most, len(self.alive))
        return out


@pytest.mark.parametrize(
    "head, most",
    [("untied", 1), ("tied", 2), ("module call", 3)],
)
def test_head_gradient_summed_in_place(monkeypatch, head, most):
    """One head-sized gradient buffer, however many chunks; tied, the embedding's gradient
    besides it, the head's sum added to it in place. The control (the head called as a
    module, as for LoRA or ZeRO-3 heads) shows autograd's own sum: buffer + chunk + sum."""
    if head == "module call":
        monkeypatch.setattr(loss_module, "_plain_head", lambda head: False)
    model = wide_vocabulary_llama(tie=head == "tied")
    if head != "tied":  # the one other tensor of the head's size
        model.model.embed_tokens.weight.requires_grad_(False)
    tokens = torch.randint(0, 2048, (4, 32), generator=torch.Generator().manual_seed(0))
    weight = model.lm_head.weight
    with LiveOfSize(weight.numel() * weight.element_size(), list(model.parameters())) as probe:
        causal_lm_loss(model, tokens, None, tokens, chunk_tokens=16).backward()
    assert probe.most == most
    assert weight.grad is not None


# --- ZeRO-3 on two ranks -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zero3_results(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("loss_zero3") / "results.pt"
    done = torchrun([str(TESTS / "loss_worker.py"), str(out)], timeout=300, cwd=TESTS)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return torch.load(out, weights_only=False)


@pytest.mark.e2e
@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_zero3_gradients_equal_hugging_face_on_each_rank(zero3_results, tie):
    """Each rank's gradients, as the post-accumulate-grad hooks see them (once per parameter)
    under ZeRO-3 with the chunked loss, against one process with the plain loss on that rank's
    rows. The ranks have different numbers of label tokens, so different chunk counts."""

    for rank, result in enumerate(zero3_results[tie]):
        model = tiny_llama(tie=tie)
        model.load_state_dict(result["initial"], strict=False)
        batch = rank_batch(rank)
        loss, expected = loss_and_grads(model, batch, chunked=False)
        assert result["hook_calls"] == {n: 1 for n in expected}
        assert result["own_chunks"] != zero3_results[tie][1 - rank]["own_chunks"]
        torch.testing.assert_close(result["loss"], loss, rtol=1e-6, atol=0)
        assert result["grads"].keys() == expected.keys()
        for name, grad in result["grads"].items():
            torch.testing.assert_close(grad, expected[name], rtol=1e-5, atol=1e-7, msg=name)
