#!/usr/bin/env bash
# bench/gpu/host_cpu.sh: issue 5's bf16 mode on the GPU machine's own CPU (often AMX / AVX512-BF16, which
# the development VMs lack), run by bench/gpu/check.sh in the background on cores the GPU stages leave
# alone. Never touches the GPU.
#   host_cpu.sh NODE PYTHON OUTFILE [CORES] [THREADS]
# 1. the CPU and its bf16 flags, and whether oneDNN runs bf16 natively there (bf16Native());
# 2. test/core/precision.test.ts (the bf16 tests; on such a CPU they exercise oneDNN's bf16 kernels), and the
#    GEMM policy and cpu-vs-reference op tests (the own GEMM's AVX-512 tiles where the CPU has them);
# 3. caformer_s18 at 224, batch 1 and 16, ours fp32 and bf16 (bench models suite, THREADS threads) and
#    onnxruntime's CPU EP (Python package, fp32, THREADS intra-op threads) on ONNX files our exporter
#    writes: the ratios of issue 5's targets on a bf16-capable CPU.
# Prints a summary (also into OUTFILE); exits non-zero when the bf16 tests fail.
set -uo pipefail
NODE=$1 PY=$2 OUTF=$3 CORES=${4:-8-15} THREADS=${5:-4}
cd "$(dirname "$0")/../.."
TMP=$(mktemp -d)
export CUDA_VISIBLE_DEVICES=""   # the CPU only
pin() { if command -v taskset >/dev/null; then taskset -c "$CORES" "$@"; else "$@"; fi; }
{
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(nproc) logical cores; running on cores $CORES, $THREADS threads"
  echo "flags: $(grep -o -w -E 'amx_bf16|amx_tile|avx512_bf16|avx512f|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')"
  pin "$NODE" -e "import('./dist/lib/plan.js').then((m) => console.log('bf16Native:', m.bf16Native()))" 2>&1
} > "$OUTF"
pin "$NODE" node_modules/vitest/vitest.mjs run --project host test/core/precision.test.ts test/core/gemm_policy.test.ts \
  test/ops/cpu_vs_ref.test.ts > "$TMP/vitest.log" 2>&1
rc=$?
grep -E '^ +(Tests|Test Files) ' "$TMP/vitest.log" | sed 's/^ */precision and GEMM tests: /' >> "$OUTF"
[ $rc = 0 ] || grep -E -A3 '(×|FAIL|Error)' "$TMP/vitest.log" | head -60 >> "$OUTF"
pin "$NODE" dist/bench/run.js models --models caformer_s18 --batches 1,16 --precisions float32,bf16 --no-torch --no-ort \
  --rounds 2 --iters 3 --threads "$THREADS" --no-write 2>&1 | grep -E '^(caformer|machine)' >> "$OUTF"
# where the time goes at batch 1 and 16 (per op and per step kind, with GFLOP/s)
for b in 1 16; do
  pin "$NODE" dist/bench/run.js profile --model caformer_s18 --batch $b --threads "$THREADS" --no-write 2>&1 | grep -v '^machine' | head -24 >> "$OUTF"
done
for b in 1 16; do
  pin "$NODE" bin/metaformer.js export-onnx "$TMP/caformer_s18_b$b.onnx" --model caformer_s18 --no-pretrained --batch "$b" \
    > /dev/null 2>> "$OUTF"
done
pin "$PY" - "$THREADS" "$TMP"/caformer_s18_b1.onnx "$TMP"/caformer_s18_b16.onnx >> "$OUTF" 2>&1 <<'PYEOF'
import statistics, sys, time
try:
    import numpy as np
    import onnxruntime as ort
except Exception as e:
    print(f"onnxruntime: not importable ({e})"); raise SystemExit(0)
threads = int(sys.argv[1])
for f in sys.argv[2:]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    s = ort.InferenceSession(f, so, providers=["CPUExecutionProvider"])
    inp = s.get_inputs()[0]
    x = np.sin(np.arange(np.prod(inp.shape), dtype=np.float32) * 0.001).reshape(inp.shape)
    for _ in range(2):
        s.run(None, {inp.name: x})
    ts = []
    for _ in range(6):
        t0 = time.perf_counter(); s.run(None, {inp.name: x}); ts.append((time.perf_counter() - t0) * 1e3)
    ms = statistics.median(ts)
    b = inp.shape[0]
    print(f"onnxruntime {ort.__version__} caformer_s18 b{b} float32 {ms:.1f} ms ({b / ms * 1e3:.1f} img/s), {threads} threads")
PYEOF
cat "$OUTF"
rm -rf "$TMP"
exit $rc
