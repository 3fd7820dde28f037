#!/usr/bin/env bash
# Idempotent set-up for a fresh machine (and CI): pinned deps, then the package
# itself in editable mode, which builds the C++ operators (csrc/) when a compiler exists.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --disable-pip-version-check -r requirements.txt
# The DALI input pipeline is optional (`--loader auto` falls back to OpenCV); a failure here is not fatal.
python -m pip install -q --disable-pip-version-check nvidia-dali-cuda130 \
  || echo "wsol_fast setup: nvidia-dali-cuda130 not installed; --loader dali will be unavailable" >&2
python -m pip install -q --disable-pip-version-check --no-build-isolation -e .
