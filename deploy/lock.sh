#!/bin/sh
# Regenerate deploy/requirements.lock: every runtime dependency of the image, pinned with hashes,
# for Linux x86_64 and Python 3.11 (the image's). torch, triton and the CUDA libraries are left
# out: the Dockerfile installs torch from the index its TORCH_INDEX_URL build argument names (the
# CPU build for the bot, the CUDA build from PyPI for the GPU trainer).
#
#   pip install uv
#   pip list --format=freeze --exclude-editable > /tmp/tested.txt   # the versions the tests ran with
#   sh deploy/lock.sh /tmp/tested.txt                                # or without a file: the newest allowed
set -eu
cd "$(dirname "$0")/.."
constraints=${1:-}
plain=$(mktemp)
pinned=$(mktemp)
trap 'rm -f "$plain" "$pinned"' EXIT
set -- pyproject.toml deploy/requirements.in --python-version 3.11 --python-platform x86_64-manylinux_2_28 --quiet
if [ -n "$constraints" ]; then
  # Local version labels (torch==2.13.0+cpu) name a build, not a version: drop them.
  sed 's/+[A-Za-z0-9.]*$//' "$constraints" > "$pinned"
  set -- "$@" --constraint "$pinned"
fi
uv pip compile "$@" --no-header --no-annotate -o "$plain"
skip=""
for name in $(sed -n 's/^\(torch\|triton\|nvidia-[a-z0-9-]*\|cuda-[a-z0-9-]*\)==.*/\1/p' "$plain"); do
  skip="$skip --no-emit-package $name"
done
# shellcheck disable=SC2086
uv pip compile "$@" $skip --generate-hashes --no-annotate --custom-compile-command "sh deploy/lock.sh" -o deploy/requirements.lock
echo "deploy/requirements.lock: $(grep -c '==' deploy/requirements.lock) packages (left out:$skip)"
