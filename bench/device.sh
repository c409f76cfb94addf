#!/usr/bin/env bash
# The GPU checks of docs/gpu.md in one script: the vLLM tests, then `python -m bench.gpu`; everything under $OUT.
#
#   OUT=DIR [PART=tests|bench|all] [SHAPE=6.7b|tiny] [BENCH_ARGS="--repeats 3"] bash bench/device.sh
#
# On a lent GPU machine once vLLM is staged and installed (PYTHONPATH=/tmp/site:$PWD, see docs/gpu.md); rehearsed
# on a CPU from .venv-vllm: OUT=/tmp/rehearsal SHAPE=tiny bash bench/device.sh. The exit status is that of the
# first part that failed; each part's output is in $OUT/<part>.log.
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the directory the results go to}"
PART=${PART:-all}
SHAPE=${SHAPE:-6.7b}
PYTHON=${PYTHON:-python}
mkdir -p "$OUT"
export VLLM_NO_USAGE_STATS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
status=0
failed() { [[ $status != 0 ]] || status=$1; }  # the first failure's status

"$PYTHON" - > "$OUT/machine.txt" 2>&1 <<'EOF'
import platform, torch, transformers
print(platform.platform(), "python", platform.python_version(), "torch", torch.__version__, "transformers",
      transformers.__version__, "cuda", torch.version.cuda,
      torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")
EOF
cat "$OUT/machine.txt"

if [[ $PART == all || $PART == tests ]]; then
    # The vLLM tests alone (the others need packages a GPU image lacks); BON_REQUIRE_VLLM makes a missing vLLM fail.
    BON_REQUIRE_VLLM=1 "$PYTHON" -m pytest -q -p no:cacheprovider --durations=10 -m "vllm and not slow" \
        --junitxml "$OUT/tests.xml" tests/server/test_vllm_backend.py tests/server/test_vllm_hot_swap.py \
        tests/models/test_reward_vllm.py tests/loadtest/test_vllm_peer.py tests/loadtest/test_fleet.py \
        > "$OUT/tests.log" 2>&1 || failed 1
    tail -n 40 "$OUT/tests.log"
fi

if [[ $PART == all || $PART == bench ]]; then
    # The models (the RM is 2.2 GB at 6.7b) stay on the machine: only the results come back.
    # shellcheck disable=SC2086
    "$PYTHON" -m bench.gpu --out "$OUT/bench" --work "${TMPDIR:-/tmp}/bon-bench-models" --shape "$SHAPE" \
        ${BENCH_ARGS:-} > "$OUT/bench.log" 2>&1 || failed 2
    tail -n 30 "$OUT/bench.log"
fi
exit "$status"
