"""Small helpers the Snakefile uses to build paths and commands (no heavy imports)."""

from typing import Any


def model_slug(name_or_path: str) -> str:
    """A path-safe name: hub ids such as huggyllama/llama-7b become huggyllama--llama-7b."""
    return name_or_path.strip("/").replace("/", "--")


def settings_to_flags(settings: dict[str, Any]) -> str:
    """`{"max_length": 256, "activation_checkpointing": False}` ->
    `--max-length 256 --no-activation-checkpointing` (the workflow builds commands with it)."""
    flags = []
    for key, value in settings.items():
        flag = key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(f"--{flag}" if value else f"--no-{flag}")
        elif isinstance(value, list):
            flags.append(f"--{flag} {' '.join(map(str, value))}")
        elif value is not None:
            flags.append(f"--{flag} {value}")
    return " ".join(flags)
