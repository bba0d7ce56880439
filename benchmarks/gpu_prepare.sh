#!/usr/bin/env bash
# Prepares .gpu/ here for benchmarks/gpu_suite.sh on the team's GPU machine, which has no
# network: the wheels corral's tests need beyond that machine's image (llguidance,
# gguf-py), and the auto-gptq sdist the GPTQ tests compare with. Name `.gpu` in the device
# tool's `carry` (it is git-ignored through .git/info/exclude, ~4 MB); gpu_suite.sh
# installs the wheels there and points CORRAL_TEST_CACHE at .gpu/testcache. For the
# llama.cpp side by side, carry `build/llama.cpp-cuda/llama-bench.gz` too (see README).
# BASELINE=<git revision> also packs that revision's corral/ into .gpu/baseline.tar.gz, for
# `gpu_suite.sh ab` (decode speed of the baseline and of the working tree in one call).
set -euo pipefail

DIR=.gpu
PYTHON=${PYTHON:-python}
CACHE=${CORRAL_TEST_CACHE:-$HOME/.cache/corral-tests}
mkdir -p "$DIR/whl" "$DIR/testcache"
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >>.git/info/exclude
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_31_x86_64 --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 -d "$DIR/whl" llguidance==1.9.1
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: -d "$DIR/whl" gguf==0.19.0
# the sdist lands in the test cache on first use (tests/autogptq_reference.py)
PYTHONPATH=. "$PYTHON" -c "from tests.autogptq_reference import quantizer_module; quantizer_module()"
cp "$CACHE"/auto_gptq-*.tar.gz "$DIR/testcache/"
if [ -n "${BASELINE:-}" ]; then
    git archive --format=tar.gz -o "$DIR/baseline.tar.gz" "$BASELINE" corral
    git rev-parse "$BASELINE" >"$DIR/baseline.rev"
fi
ls -l "$DIR/whl" "$DIR/testcache"
