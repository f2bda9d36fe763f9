#!/usr/bin/env bash
# The emulated CUDA kernels under the sanitizers (`make cuda-sim-sanitize`): _C_sim built with
# ThreadSanitizer, then with AddressSanitizer + UBSan (tools/simt_build.py --sanitize), each run
# over a subset of tests/sim in a Python with the sanitizer's runtime preloaded. TSan runs the
# kernels with 2 blocks live at once (the one-launch kernel's flag handshake across OS threads);
# the planted-bug kernels of test_emulator.py are left out (they race on purpose). Exits non-zero
# on any report.
#   usage: bash tools/simt_sanitize.sh [thread|address]...      (default: both)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
# The subset: every kernel (stats, stats backward, conv forward and dx, dx by output parity, dW/dm,
# one launch) in fp32 and fp16 (ldmatrix + mma.sync + cp.async), NCHW and channels_last, on small
# shapes; and the emulator's correct kernels.
SUBSET="test_one_launch_op_returns_m_z_h and (3x3 and not s2) and (float32 or float16) \
or test_layer_matches_reference and 3x3-float16-cl or test_layer_matches_reference and 3x3-float32-nchw \
or test_every_grad_route_matches_reference and float32 and both \
or test_statistics_of_huge_inputs and float32 \
or test_barrier_orders or test_shared_memory or test_warp_shuffle or test_ready_flag_handshake_is_correct \
or test_wmma_through_fragments \
or test_tensor_core_weight_grad_matches_reference and float16 and cl \
or test_simt_weight_grad_matches_reference and float32 or test_strided_dx_matches_reference and float16"
kinds=("$@")
[[ ${#kinds[@]} -gt 0 ]] || kinds=(thread address)
for kind in "${kinds[@]}"; do
  start=$(date +%s)
  "$PY" tools/simt_build.py --sanitize "$kind"
  so="$ROOT/build/cuda-sim/$kind/shc_kernels/_C_sim.so"
  case "$kind" in
    thread)
      preload="$(${CXX:-c++} -print-file-name=libtsan.so)"
      export TSAN_OPTIONS="halt_on_error=1 exitcode=66 report_signal_unsafe=0 ${TSAN_OPTIONS:-}" ;;
    address)
      # libstdc++ too: ASan resolves the real __cxa_throw at start-up, before python loads it
      preload="$(${CXX:-c++} -print-file-name=libasan.so) $(${CXX:-c++} -print-file-name=libstdc++.so)"
      export ASAN_OPTIONS="detect_leaks=0 halt_on_error=1 ${ASAN_OPTIONS:-}"
      export UBSAN_OPTIONS="halt_on_error=1 print_stacktrace=1 ${UBSAN_OPTIONS:-}" ;;
    *) echo "sanitize: unknown sanitizer $kind (thread, address)" >&2; exit 2 ;;
  esac
  # One torch thread: torch's own OpenMP work (the reference) synchronises in an uninstrumented
  # libgomp, which TSan would report.
  run() {
    OMP_NUM_THREADS=1 SHC_SIM_SO="$so" SHC_SIM_TESTS=1 LD_PRELOAD="$preload" \
      "$PY" -m pytest -q -s -p no:cacheprovider tests/sim "$@"
  }
  if [[ $kind == thread ]]; then
    # The layer's TSan annotations are tested too: the planted missing __syncthreads is reported.
    log="$ROOT/build/cuda-sim/thread/planted.log"
    if run -k "missing_syncthreads and forward" > "$log" 2>&1 || ! grep -q "reverse_kernel" "$log"; then
      echo "sanitize: TSan did not report the planted missing __syncthreads (log: $log)" >&2
      exit 1
    fi
    echo "sanitize: thread: the planted missing __syncthreads is reported"
  fi
  echo "sanitize: $kind: tests/sim subset with $so"
  run -k "$SUBSET"
  echo "sanitize: $kind clean in $(( $(date +%s) - start ))s"
done
