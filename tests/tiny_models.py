"""Tiny random-init models and token batches for fast optimizer tests: LLaMA, and one tiny
config per model family the project supports (`FAMILIES`)."""

from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    GraniteConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    Phi3Config,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
)

VOCAB = 128
SLIDING_WINDOW = 8  # tokens; the family tests use prompts longer than this


def tiny_llama(
    seed: int = 0, tie: bool = False, dtype: torch.dtype = torch.float32, vocab: int = VOCAB
) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
        attn_implementation="eager",
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).to(dtype)


# What each family brings that LLaMA-1 does not (the sizes are shared: `family_config`):
# - llama3: grouped-query attention, tied embeddings, LLaMA-3's rope scaling;
# - mistral: a sliding attention window;
# - qwen2: biases on q, k and v; tied embeddings;
# - gemma2: soft-capped attention scores and final logits (the chunked loss must cap too),
#   4 norms per layer, head_dim != hidden / heads, sliding window on every other layer, an
#   embedding scaled by sqrt(hidden), GELU MLP; no sdpa (its class says so);
# - phi3: fused qkv and gate/up projections, a sliding window;
# - granite: logits divided by `logits_scaling`, muP multipliers on embedding and residuals.
FAMILIES = {
    "llama": (LlamaConfig, {}),
    "llama3": (
        LlamaConfig,
        {
            "num_key_value_heads": 2,
            "tie_word_embeddings": True,
            "rope_parameters": {
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        },
    ),
    "mistral": (MistralConfig, {"num_key_value_heads": 2, "sliding_window": SLIDING_WINDOW}),
    "qwen2": (Qwen2Config, {"num_key_value_heads": 2, "tie_word_embeddings": True}),
    "gemma2": (
        Gemma2Config,
        {
            "num_key_value_heads": 2,
            "head_dim": 16,
            "query_pre_attn_scalar": 16,
            "sliding_window": SLIDING_WINDOW,
            # small enough to bite on a random model's logits (Gemma-2's own: 30 and 50)
            "final_logit_softcapping": 0.5,
            "attn_logit_softcapping": 2.0,
            "tie_word_embeddings": True,
        },
    ),
    "phi3": (Phi3Config, {"sliding_window": SLIDING_WINDOW, "tie_word_embeddings": False}),
    "granite": (
        GraniteConfig,
        {
            "num_key_value_heads": 2,
            "logits_scaling": 4.0,
            "embedding_multiplier": 2.0,
            "residual_multiplier": 0.5,
            "attention_multiplier": 0.25,
        },
    ),
}


def family_config(family: str, vocab: int = VOCAB, **overrides) -> PretrainedConfig:
    """A 2-layer config of the family (hidden 32, 4 heads), eager attention."""
    config_class, traits = FAMILIES[family]
    values = dict(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=False,
    )
    values.update(traits)
    values.update(overrides)
    return config_class(**values)


def tiny_family(family: str, seed: int = 0, vocab: int = VOCAB, **overrides) -> PreTrainedModel:
    """A random-init model of the family in fp32, eager attention (every family has it)."""
    config = family_config(family, vocab, **overrides)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager")


def save_family_checkpoint(
    family: str, folder: Path, tokenizer=None, vocab: int = VOCAB, **overrides
) -> Path:
    """A Hugging Face model folder (config.json, model.safetensors, and the tokenizer's files
    when given one: its vocabulary sets the model's)."""
    vocab = len(tokenizer) if tokenizer is not None else vocab
    tiny_family(family, vocab=vocab, **overrides).save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def token_batches(n: int, batch_size: int = 4, seq_len: int = 12, seed: int = 1) -> list:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (batch_size, seq_len), generator=generator) for _ in range(n)]


def lm_loss(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    return model(input_ids=tokens, labels=tokens).loss
