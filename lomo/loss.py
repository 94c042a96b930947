"""The causal-LM training loss without the logits of the whole batch: chunked linear + CE.

`causal_lm_loss(model, input_ids, attention_mask, labels)` returns exactly what Hugging Face's
`model(input_ids=..., attention_mask=..., labels=...).loss` returns (labels shifted by one,
-100 ignored, the mean over the remaining tokens, logits upcast to fp32), but the
`tokens x vocab` logits never exist at once. With today's vocabularies they are the largest
tensor of a fine-tuning step (SmolLM2-135M, batch 4 x 256: 0.19 GB of fp32 logits plus their
log-softmax and gradient, more than the whole model's bf16 weights).

How:
1. The decoder runs as usual (`model.get_decoder()`); only the positions that predict a
   non-ignored label are kept (a prompt's positions cost nothing further).
2. Those hidden states are split into chunks of `chunk_tokens` (default: a chunk's logits
   hold no more values than the batch's hidden states). Each chunk runs LM head + fp32
   cross-entropy (summed) under a *non-reentrant* `torch.utils.checkpoint`: nothing of the
   chunk is kept for backward except its hidden states; in backward the chunk's logits are
   recomputed, turned into the gradients of its hidden states and of the head weight, and
   freed before the next chunk. Extra memory: one chunk's logits and their gradient. The
   price: one more LM-head matmul per chunk (the recompute).
3. Why a checkpoint: the gradient path stays autograd's own. Non-reentrant checkpointing
   reuses the original graph, so the head weight's `AccumulateGrad` runs once per backward
   and LOMO's post-accumulate-grad hook sees its full gradient exactly once (tied: head +
   embedding), as with the unchunked loss. (The reentrant form would accumulate into `.grad`
   once per chunk and fire the hook each time.)
4. The head weight's gradient is summed over the chunks in one buffer, in place. For a plain
   bias-free `nn.Linear` head the matmul is `_LinearSharingWeightGrad`, which adds each
   chunk's weight gradient into that buffer (`addmm_`) and hands the sum to autograd from the
   last chunk; tied to the input embedding, the sum is added in place to the embedding's
   gradient by a hook on the weight. (Left to autograd, the chunks' weight gradients arrive
   as transposed views and are summed out of place: buffer + chunk + sum, 3x the head's size.)
5. Any other head (LoRA on the head via peft, a DeepSpeed ZeRO-3 partitioned weight) is
   called as a module, so whatever wraps it keeps working unchanged: ZeRO-3's module hooks
   gather the partitioned weight before each forward and backward use. Exact as well; only the
   head gradient's sum is then autograd's (up to 3x the head's size for a moment).

Under ZeRO-3 every rank must call the (partitioned) LM head the same number of times, since
each call gathers its weight collectively; ranks agree on the largest chunk count and a rank
with fewer tokens runs empty chunks. A *frozen* partitioned head (LoRA under ZeRO-3) is
refused: DeepSpeed 0.19.8 does not gather it again for the recompute in backward.

Exact means: in fp32, every gradient equals the plain path's to rounding (tests/test_loss.py).
In bf16/fp16 the head gradient's buffer has the weight's dtype, so it is rounded once per
chunk, as `.grad` is once per micro-batch under gradient accumulation. A head with dropout
(LoRA dropout on `lm_head`) draws its masks per chunk, so they differ from the plain path's.

Families whose head does more than `lm_head(hidden)` (`logit_transform`): Gemma-2's
`final_logit_softcapping`, Cohere's `logit_scale`, Granite's `logits_scaling`, read from the
config and applied to each chunk's logits before the fp32 cross-entropy, as their
`forward` does. A family that transforms its logits in a way not listed here would train on a
different loss: `check_chunked_loss` compares the two losses on a batch (lomo finetune: its
first training example) and stops naming the family where they differ.

`chunked=False` is the plain path, `model(...).loss`, for comparison and as the off switch.
"""

import math
import weakref
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lomo.sync import all_reduce_numbers

IGNORE_INDEX = -100  # Hugging Face's label for "no loss here"


def default_chunk_tokens(num_tokens: int, hidden_size: int, vocab_size: int) -> int:
    """Chunks whose logits hold no more values than the batch's hidden states
    (`chunk x vocab <= tokens x hidden`), so the loss never dominates the activations."""
    return max(1, num_tokens * hidden_size // vocab_size)


class _SharedWeightGrad:
    """Sums the head weight's gradient over the chunks of one backward, in place.

    Untied: the last chunk hands the sum to autograd (earlier chunks hand nothing). Tied to
    the input embedding: no chunk hands anything; a hook on the weight adds the sum in place
    to the embedding's gradient when that arrives (at the end of backward), so the two are
    never summed into a third tensor (autograd sums in place only when no dispatch mode,
    such as the memory census, is active)."""

    def __init__(self, weight: Tensor, uses: int, tied: bool) -> None:
        self.uses = uses
        self.seen = 0
        self.total: Tensor | None = None
        self.tied = tied and weight.requires_grad
        if self.tied:
            this = weakref.ref(self)  # the hook must not keep us (and our graph) alive

            def hook(grad: Tensor) -> Tensor:
                shared = this()
                return grad if shared is None else shared._add_to_embedding_grad(grad)

            handle = weight.register_hook(hook)
            weakref.finalize(self, handle.remove)  # when the graph that holds us is freed

    def add(self, grad_logits: Tensor, hidden: Tensor) -> Tensor | None:
        if self.total is None:
            self.total = grad_logits.t().mm(hidden)
        else:
            self.total.addmm_(grad_logits.t(), hidden)
        self.seen += 1
        if self.seen < self.uses or self.tied:
            return None  # nothing (yet) for the weight: autograd skips an undefined gradient
        return self._take()

    def _take(self) -> Tensor:
        total, self.total, self.seen = self.total, None, 0  # reset: a retained graph reruns
        return total

    def _add_to_embedding_grad(self, grad: Tensor) -> Tensor:
        if self.seen == 0:
            return grad  # a backward through another graph (e.g. a newer loss's)
        if self.seen != self.uses:
            raise RuntimeError(
                f"the tied embedding's gradient arrived after {self.seen} of {self.uses} "
                "LM-head chunks: backward ran in an unexpected order"
            )
        return grad.add_(self._take())


class _LinearSharingWeightGrad(torch.autograd.Function):
    """`F.linear(hidden, weight)` whose weight gradient goes to a `_SharedWeightGrad`, which
    hands the sum over all chunks to autograd once, from the last chunk's backward."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, shared: _SharedWeightGrad) -> Tensor:
        ctx.save_for_backward(hidden, weight)
        ctx.shared = shared
        return F.linear(hidden, weight)

    @staticmethod
    def backward(ctx, grad_logits: Tensor):
        hidden, weight = ctx.saved_tensors
        grad_hidden = grad_logits.mm(weight) if ctx.needs_input_grad[0] else None
        grad_weight = ctx.shared.add(grad_logits, hidden) if ctx.needs_input_grad[1] else None
        return grad_hidden, grad_weight, None


def _plain_head(head: nn.Module) -> bool:
    """A bias-free nn.Linear whose weight is an ordinary tensor (not ZeRO-3 partitioned)."""
    return type(head) is nn.Linear and head.bias is None and not hasattr(head.weight, "ds_id")


def logit_transform(config) -> Callable[[Tensor], Tensor] | None:
    """What the model's causal-LM forward does to `lm_head(hidden)` before the loss, read from
    its (text) config, or None: Granite divides by `logits_scaling`, Cohere multiplies by
    `logit_scale`, Gemma-2 (and later Gemmas) soft-cap with `final_logit_softcapping`."""
    config = config.get_text_config()
    divisor = getattr(config, "logits_scaling", None)
    factor = getattr(config, "logit_scale", None)
    cap = getattr(config, "final_logit_softcapping", None)
    if divisor is None and factor is None and cap is None:
        return None

    def transform(logits: Tensor) -> Tensor:
        if divisor is not None:
            logits = logits / divisor
        if factor is not None:
            logits = logits * factor
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

    return transform


def _head_and_cross_entropy(
    head: nn.Module,
    shared: _SharedWeightGrad | None,
    transform: Callable[[Tensor], Tensor] | None,
    hidden: Tensor,
    labels: Tensor,
) -> Tensor:
    if shared is None:
        logits = head(hidden)
    else:
        logits = _LinearSharingWeightGrad.apply(hidden, head.weight, shared)
    if transform is not None:
        logits = transform(logits)
    # upcast as Hugging Face's ForCausalLMLoss does
    return F.cross_entropy(logits.float(), labels, reduction="sum")


def _zero3_chunk_count(head: nn.Module, num_chunks: int) -> int:
    """The largest chunk count over the ranks sharing a ZeRO-3 partitioned head, else ours."""
    weight = head.weight if hasattr(head, "weight") else next(head.parameters())
    if not hasattr(weight, "ds_id") or not dist.is_initialized():
        return num_chunks
    (most,) = all_reduce_numbers([num_chunks], op=dist.ReduceOp.MAX, group=weight.ds_process_group)
    return int(most)


def frozen_partitioned_head(model: nn.Module) -> bool:
    """A frozen ZeRO-3 partitioned LM head (LoRA under ZeRO-3), which the chunked loss cannot
    use: measured with DeepSpeed 0.19.8, the chunk's recompute in backward sees the released,
    empty partition (torch's CheckpointError), where a trainable head is gathered again."""
    weight = model.get_output_embeddings().weight
    return hasattr(weight, "ds_id") and not weight.requires_grad


def causal_lm_loss(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    labels: Tensor,
    chunk_tokens: int | None = None,
    chunked: bool = True,
) -> Tensor:
    """Mean next-token cross-entropy over the labels that are not -100, as `model(...).loss`.

    `model`: a Hugging Face causal LM (or a peft model around one). `chunk_tokens`: tokens per
    chunk (default: `default_chunk_tokens`). `chunked=False`: the plain `model(...).loss`.
    """
    if labels.shape != input_ids.shape:
        raise ValueError(
            f"labels {tuple(labels.shape)} and input_ids {tuple(input_ids.shape)} differ in shape"
        )
    if chunk_tokens is not None and chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    if not chunked:
        return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    head = model.get_output_embeddings()
    if frozen_partitioned_head(model):
        raise NotImplementedError(
            "the chunked loss cannot recompute a frozen ZeRO-3 partitioned LM head in backward "
            "(DeepSpeed does not gather it again): pass chunked=False"
        )
    decoder = model.get_decoder()
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    # Position t predicts token t + 1; the last position predicts nothing.
    targets = labels[:, 1:].to(hidden.device)
    keep = targets != IGNORE_INDEX
    hidden, targets = hidden[:, :-1][keep], targets[keep]
    num_tokens = targets.numel()
    if chunk_tokens is None:
        chunk_tokens = default_chunk_tokens(
            num_tokens, hidden.shape[-1], model.config.get_text_config().vocab_size
        )
    num_chunks = _zero3_chunk_count(head, max(1, math.ceil(num_tokens / chunk_tokens)))
    shared = None
    if _plain_head(head):
        tied = head.weight is model.get_input_embeddings().weight
        shared = _SharedWeightGrad(head.weight, num_chunks, tied)
    transform = logit_transform(model.config)
    total = hidden.new_zeros((), dtype=torch.float32)
    for hidden_chunk, target_chunk in zip(
        hidden.tensor_split(num_chunks), targets.tensor_split(num_chunks), strict=True
    ):
        total = total + checkpoint(
            _head_and_cross_entropy,
            head,
            shared,
            transform,
            hidden_chunk,
            target_chunk,
            use_reentrant=False,
        )
    return total / num_tokens  # no tokens: 0 / 0 = nan, as Hugging Face's mean


# How far apart the two losses of one batch may be (relative): rounding, which averages out over
# the batch's tokens (the tiny family checkpoints of tests/test_families.py: about 1e-7 in fp32
# and bf16); leaving out Gemma-2's soft-capping moves a random model's loss by 1e-3 or more.
CHECK_TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-3, torch.float16: 1e-3}


class ChunkedLossMismatch(ValueError):
    """The chunked loss differs from the model's own: lomo.loss does not know its head."""


@torch.no_grad()
def check_chunked_loss(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None, labels: Tensor
) -> tuple[float, float]:
    """The chunked loss and `model(...).loss` of one batch, in eval mode (no dropout); raises
    `ChunkedLossMismatch`, naming the model's family, where they differ by more than rounding.
    Under ZeRO-3 every rank must call it (each forward gathers the weights)."""
    was_training = model.training
    model.eval()
    # No graph: under ZeRO-3 a forward with autograd on registers backward hooks that no
    # backward ever runs, and the next real backward finds the tied embedding still gathered.
    try:
        batch = dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        with torch.no_grad():
            ours = causal_lm_loss(model, **batch).item()
            theirs = causal_lm_loss(model, **batch, chunked=False).item()
    finally:
        model.train(was_training)
    dtype = model.get_output_embeddings().weight.dtype
    if not math.isclose(ours, theirs, rel_tol=CHECK_TOLERANCE.get(dtype, 1e-5)):
        config = model.config.get_text_config()
        raise ChunkedLossMismatch(
            f"the chunked loss is {ours:.6f} where {type(model).__name__} "
            f"(model_type {config.model_type}) computes {theirs:.6f} on the batch checked: "
            "lomo.loss does not know how this family turns hidden states into logits; "
            "train with --no-chunked-loss"
        )
    return ours, theirs
