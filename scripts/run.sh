#!/usr/bin/env bash
# One command from a fresh Debian machine to a running chatbot: installs dependencies,
# builds, and serves the chat page + OpenAI API. Without --model it serves the small
# trained stories260K from ../shared so it works offline; pass your Llama 3.1 directory:
#   scripts/run.sh --model /models/Llama-3.1-8B-Instruct
# Any other flags go to `cpuchat serve` (see `build/cpuchat serve --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh
args=("$@")
if [[ " ${args[*]} " != *" --model "* && " ${args[*]} " != *" --model="* ]]; then
  args=(--model "$(cd .. && pwd)/shared/models/hf/stories260K" "${args[@]}")
fi
exec build/cpuchat serve "${args[@]}"
