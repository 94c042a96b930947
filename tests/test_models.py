import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from lomo.train.models import SMOLLM2, convert_gguf, gguf_path, load_model, load_tokenizer


def test_tiny_llama_shape_vocabulary_and_seeded_init():
    rng_before = torch.random.get_rng_state()
    model = load_model("tiny-llama")
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # caller's RNG untouched
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers) == (64, 2)
    assert (config.num_attention_heads, config.intermediate_size) == (4, 128)
    assert config.vocab_size == len(load_tokenizer("tiny-llama")) == 49152
    again = load_model("tiny-llama", dtype=torch.bfloat16)
    assert again.model.embed_tokens.weight.dtype == torch.bfloat16
    assert torch.equal(again.lm_head.weight, model.lm_head.weight.to(torch.bfloat16))


def test_tokenizer_is_smollm2s():
    tokenizer = load_tokenizer("tiny-llama")
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|im_end|>")
    assert tokenizer("Answer: Yes").input_ids == [21350, 42, 9230]


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown model 'gpt5': expected one of smollm2-135m"):
        load_model("gpt5")


def test_smollm2_from_cache_is_tied_and_sensible():
    model = load_model(SMOLLM2)
    tokenizer = load_tokenizer(SMOLLM2)
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.num_parameters() == 134_515_008
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        next_token = model(ids).logits[0, -1].argmax()
    assert tokenizer.decode(next_token) == " Paris"


@pytest.mark.slow
def test_gguf_conversion_writes_a_plain_safetensors_folder(tmp_path, capsys):
    dest = tmp_path / "models" / SMOLLM2
    convert_gguf(gguf_path(), dest)
    assert "converting SmolLM2-135M-Instruct.Q4_1.gguf" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [SMOLLM2]  # no temp left
    config = json.loads((dest / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"]
    weights = load_file(dest / "model.safetensors")
    assert "lm_head.weight" not in weights  # tied: stored once
    assert weights["model.embed_tokens.weight"].shape == (49152, 576)
    assert weights["model.embed_tokens.weight"].dtype == torch.float32


CONVERT_ONCE = """
import time
from pathlib import Path

import lomo.train.models as models


def convert(gguf, dest):
    print("converting", flush=True)
    time.sleep(2)
    dest.mkdir()  # a second conversion into the same folder fails here
    (dest / "config.json").write_text("{}")
    (dest / "model.safetensors").write_text("weights")


models.gguf_path = lambda: Path("SmolLM2.gguf")
models.convert_gguf = convert
print(models.smollm2_folder())
"""


# slow (-m slow); in the default suite: test_a_cache_folder_without_weights_is_converted_again
@pytest.mark.slow
def test_parallel_first_loads_convert_once(tmp_path):
    # Two ranks of a distributed run both start on a cold cache.
    env = {**os.environ, "LOMO_CACHE_DIR": str(tmp_path)}
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", CONVERT_ONCE], env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [rank.communicate(timeout=120)[0] for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0]
    assert sum(out.count("converting") for out in outputs) == 1
    assert all(out.strip().endswith(f"{tmp_path}/{SMOLLM2}") for out in outputs)


def test_a_cache_folder_without_weights_is_converted_again(tmp_path):
    broken = tmp_path / SMOLLM2
    broken.mkdir()
    (broken / "tokenizer.json").write_text("{}")
    env = {**os.environ, "LOMO_CACHE_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", CONVERT_ONCE], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "has no weights" in done.stdout and "converting" in done.stdout
    assert sorted(p.name for p in broken.iterdir()) == ["config.json", "model.safetensors"]
