#!/usr/bin/env bash
# Offline assets that come from PyPI sdists (package registry only), verified by sha256.
# Usage: tools/fetch_assets.sh PYTHON
set -euo pipefail
PY=${1:-python3}
ASSETS=gaugeformer/assets
mkdir -p "$ASSETS"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
# GPT-2 BPE ranks (= tiktoken r50k_base), shipped in the openai-whisper sdist. Never pip-install that package.
if ! echo "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930  $ASSETS/gpt2.tiktoken" | sha256sum -c - >/dev/null 2>&1; then
  echo "fetching GPT-2 BPE ranks (openai-whisper==20250625 sdist)"
  "$PY" -m pip download -q --no-deps openai-whisper==20250625 -d "$tmp"
  tar -xzf "$tmp"/openai_whisper-20250625.tar.gz -C "$tmp" openai_whisper-20250625/whisper/assets/gpt2.tiktoken
  cp "$tmp"/openai_whisper-20250625/whisper/assets/gpt2.tiktoken "$ASSETS/gpt2.tiktoken"
  echo "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930  $ASSETS/gpt2.tiktoken" | sha256sum -c -
fi
