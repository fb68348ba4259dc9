#!/usr/bin/env bash
# The whole grown corpus (models/families/): export every family (cached in .corpus), check its
# recognition counts and quantize it with W8/A8, --pts --lis and --target trt through the gate.
# CI runs the families tagged "ci" only; this runs all of them.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m onnxvq.models.families --all
ONNXVQ_FULL_CORPUS=1 pytest -m slow -q tests/models/test_families.py "$@"
