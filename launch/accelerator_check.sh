#!/usr/bin/env bash
# The first minutes on a rented GPU or TPU VM: install the accelerator's jax, then measure what the
# project needs to know before a long run, and print one table (docs/benchmarks.md):
#   - `radial bench train`: dense and radial at ~125M and ~350M parameters (configs/accel/), bf16,
#     a few dozen steps each: step time, tokens/s, MFU, radial/dense step-time ratio;
#   - `radial bench decode`: the 125M pair at batch 1, 8 and 32: ms per token, radial/dense;
#   - `radial compile --topology local`: the 1B pair (configs/radial_1b.yaml, dense_1b.yaml) compiled
#     for this host's devices at 8 sequences per device: memory against HBM, FLOPs, collectives.
# Each stage writes its JSON into OUT (default accel_check/); OUT/summary.json sums them up. A stage
# that fails is reported and the others still run; the exit status is 1 if any failed.
# Sized for about 8 minutes on one H100-class GPU.
#
# Usage: launch/accelerator_check.sh [--dry-run] [--no-install] [--out DIR]
#   --dry-run     the same stages on the CPU with tiny stand-in configs and 2-3 timed steps (CI)
#   --no-install  use the jax already installed
# Environment: PYTHON (default python3; the interpreter radial_jax is or will be installed in).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DRY=0
INSTALL=1
OUT=accel_check
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1; INSTALL=0 ;;
    --no-install) INSTALL=0 ;;
    --out) OUT="$2"; shift ;;
    *) echo "unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$OUT"

# ------------------------------------------------------------------ jax for this accelerator
if [ "$INSTALL" = 1 ]; then
  if ! "$PYTHON" -c "import radial_jax" 2>/dev/null; then
    echo "== installing radial_jax"
    "$PYTHON" -m pip install --quiet -e . || exit 1
  fi
  # Keep the jax version radial_jax was installed with; add the accelerator's plugin.
  JAX_VERSION=$("$PYTHON" -c "import jax; print(jax.__version__)")
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "== NVIDIA GPU found: installing jax[cuda12]==$JAX_VERSION"
    "$PYTHON" -m pip install --quiet "jax[cuda12]==$JAX_VERSION" || exit 1
  elif [ -e /dev/accel0 ] || [ -e /dev/vfio/0 ] || [ -n "${TPU_NAME:-}" ]; then
    echo "== TPU found: installing jax[tpu]==$JAX_VERSION"
    "$PYTHON" -m pip install --quiet "jax[tpu]==$JAX_VERSION" || exit 1
  else
    echo "== no GPU or TPU found: using the installed jax $JAX_VERSION"
  fi
fi

RADIAL=("$PYTHON" -m radial_jax.cli)
if [ "$DRY" = 1 ]; then
  export JAX_PLATFORMS=cpu
  SIZES=(tiny)
  # Stand-ins: the tiny pair, narrower and shorter; 2 timed steps per window.
  TINY=(model.d_model=32 model.n_heads=2 model.n_kv_heads=2 model.d_ff=64 data.seq_len=32 data.batch_size=4)
  declare -A PAIR=([tiny]="configs/tiny.yaml configs/radial_tiny.yaml")
  TRAIN_ARGS=(--steps 2)
  DECODE_ARGS=(--windows 1)
  DECODE_BATCHES=(1 8)
  COMPILE_CONFIGS=(configs/tiny.yaml configs/radial_tiny.yaml)
  COMPILE_ARGS=("${TINY[@]}")
  TOPOLOGY=cpu:2
else
  SIZES=(125m 350m)
  TINY=()
  declare -A PAIR=([125m]="configs/accel/dense_125m.yaml configs/accel/radial_125m.yaml"
                   [350m]="configs/accel/dense_350m.yaml configs/accel/radial_350m.yaml")
  TRAIN_ARGS=(--steps 25)
  DECODE_ARGS=(--windows 5)
  DECODE_BATCHES=(1 8 32)
  COMPILE_CONFIGS=(configs/dense_1b.yaml configs/radial_1b.yaml)
  TOPOLOGY=local
  DEVICES=$("$PYTHON" -c "import jax; print(jax.device_count())")
  COMPILE_ARGS=(mesh.data=1 mesh.fsdp=-1 "data.batch_size=$((8 * DEVICES))")
fi

FAILED=()
stage() {  # stage NAME COMMAND...: run it, log it, remember a failure
  local name=$1; shift
  echo "== $name: $*"
  local t0=$SECONDS
  if "$@" > "$OUT/$name.log" 2>&1; then
    echo "   done in $((SECONDS - t0)) s (log: $OUT/$name.log)"
  else
    echo "   FAILED after $((SECONDS - t0)) s; the end of $OUT/$name.log:"
    tail -n 15 "$OUT/$name.log" | sed 's/^/   | /'
    FAILED+=("$name")
  fi
}

for size in "${SIZES[@]}"; do
  read -r -a configs <<< "${PAIR[$size]}"
  stage "train_$size" "${RADIAL[@]}" bench train --configs "${configs[@]}" "${TINY[@]}" "${TRAIN_ARGS[@]}" \
    --out "$OUT/train_$size.json"
done
read -r -a configs <<< "${PAIR[${SIZES[0]}]}"
BATCHES=()  # batch 32 too, where this version of `radial bench decode` takes --batch-sizes
if "${RADIAL[@]}" bench --help 2>/dev/null | grep -q -- --batch-sizes; then
  BATCHES=(--batch-sizes "${DECODE_BATCHES[@]}")
fi
stage decode "${RADIAL[@]}" bench decode --configs "${configs[1]}" "${configs[0]}" "${TINY[@]}" \
  "${BATCHES[@]}" --no-transformers "${DECODE_ARGS[@]}" --out "$OUT/decode.json"
for config in "${COMPILE_CONFIGS[@]}"; do
  name=$(basename "$config" .yaml)
  stage "compile_$name" "${RADIAL[@]}" compile "$config" --topology "$TOPOLOGY" \
    --out "$OUT/compile_$name.json" "${COMPILE_ARGS[@]}"
done

echo
"$PYTHON" -m radial_jax.bench.accelerator "$OUT" || FAILED+=(summary)
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "failed stages: ${FAILED[*]}"
  exit 1
fi
