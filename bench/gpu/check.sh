#!/usr/bin/env bash
# bench/gpu/check.sh: the CUDA backend's proof on a real GPU, in one command (about 5-8 minutes).
#
#   OUT=/some/dir bash bench/gpu/check.sh          (from the repository root; OUT defaults to ./build-gpu-out)
#
# Needs: an NVIDIA GPU with its driver, nvcc, CMake, a C++ compiler, cuBLAS (the toolkit's, or the
# nvidia-cublas Python wheel that PyTorch installs: found automatically), Python with PyTorch for the
# peer benchmarks (timm for the model peers). It does NOT need Node installed: the op checks, the model
# fixtures and our model timings run from the C++ checker (native/cuda/tests), which replays model plans,
# and the Node library's GPU tests run on a Node carried along. Prepare both where Node is:
#
#   bash bench/gpu/prepare.sh        (writes build-gpu-carry/: Node, the CUDA addon, vitest, fixtures)
#
# and carry build-gpu-carry along; check.sh unpacks it and exports the plans there. Plans exported
# beforehand (node dist/bench/gpu/export_plans.js build-gpu-plans) are used when present. Without either
# the model and Node stages report SKIPPED.
#
# Stages (each reports PASS, FAIL or SKIPPED with the reason, in $OUT/check.log and the results):
#   env        card, driver, toolkit, PyTorch
#   build      standalone CMake build of metaformer_cuda_check for sm_90 with cuBLAS
#   ops        every op, forward and backward, CUDA vs the reference backend (random odd shapes)
#   node       unpacks build-gpu-carry (Node, the addon built with CUDA, vitest, the tiny fixtures) and
#              exports the model plans with it
#   fixtures   the five tiny model fixtures (logits, features, stage outputs) replayed on the GPU, and
#              their logits again in bf16 precision (within 2e-2 of the reference)
#   kernels    our depthwise 7x7 conv and attention kernels at MetaFormer shapes, B = 1, 64, 256
#   models     our caformer_s18 / convformer_s18 forward at 224, B = 1, 64, 256 (fp32 and bf16)
#   nodetests  the library's GPU tests through Node (vitest), then predict() timings of { device: 'cuda' }
#              models from Node (bench/gpu/node_models.ts): device handling, tensors to and from the
#              GPU, the tiny model fixtures forward and backward on 'cuda' against the float64 reference,
#              predict()/features() on the GPU in fp32 and bf16, an AdamW step and a Trainer run
#              (mixup, EMA, checkpoint resume) on the GPU against the CPU
#              (device plans as CUDA graphs, the default; the predict() timings step by step,
#              METAFORMER_CUDA_GRAPHS=0); FAIL when a test fails or a recording failed (binding/plan.cpp
#              reports it)
#   graphs     the same Node tests of predict() on 'cuda' (device.test.ts, the tiny fixtures) with graphs
#              off (METAFORMER_CUDA_GRAPHS=0: plans step by step), and the predict() timings with graphs
#              (plans recorded once as CUDA graphs and replayed)
#   hostcpu    (in the background, on the upper half of the cores, from the node stage on) issue 5's bf16
#              mode on this machine's CPU: the bf16 tests and caformer_s18 fp32/bf16 beside onnxruntime's
#              CPU EP (bench/gpu/host_cpu.sh)
#   ncu        (diagnostics) Nsight Compute over one launch of each kernel worth profiling (the checker's
#              --profile-targets: depthwise, attention fp32/bf16, layer norm, conv fp32/bf16, a bf16 fused
#              linear): duration, memory and SM throughput, occupancy per kernel; full text in ncu.txt.
#              SKIPPED, with the reason, when ncu is missing or cannot profile here
#   torch      PyTorch on the same GPU: cuDNN depthwise conv, scaled_dot_product_attention, timm models
#              (eager fp32 / bf16, channels_last, torch.compile when time allows)
#   report     $OUT/RESULTS-gpu.md (ready to commit as bench/RESULTS-gpu.md) and $OUT/results.json
#   Logs other than check.log are packed into $OUT/logs.tar.gz ($OUT holds at most 8 files, so a remote
#   runner that returns only a few files still returns everything).
#
# CHECK_STAGES=ops,fixtures,nodetests (a comma list of the stages above) runs only those, e.g. a quick
# re-check of fixes after a full run (~2 minutes); the others report SKIPPED.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-$ROOT/build-gpu-out}
mkdir -p "$OUT"
LOG=$OUT/check.log
STAGES=$OUT/stages.tsv
: > "$LOG"
: > "$STAGES"
START=$(date +%s)
BUDGET=${CHECK_BUDGET_S:-465}   # the whole check must end within 8 minutes
BUILD=${BUILD_DIR:-$ROOT/build-gpu}
PLANS=${PLANS_DIR:-$ROOT/build-gpu-plans}
CHECK=$BUILD/metaformer_cuda_check
PY=${PYTHON:-python3}

# nvcc is often installed without being on PATH.
if ! command -v nvcc >/dev/null 2>&1; then
  for d in /usr/local/cuda/bin /usr/local/cuda-*/bin /opt/cuda/bin; do
    if [ -x "$d/nvcc" ]; then export PATH="$d:$PATH"; break; fi
  done
fi
command -v nvcc >/dev/null 2>&1 && export CUDACXX=${CUDACXX:-$(command -v nvcc)}

STAGES_WANTED=${CHECK_STAGES:-all}
# want STAGE: whether CHECK_STAGES asks for it (otherwise it is recorded as SKIPPED).
want() {
  if [ "$STAGES_WANTED" = all ] || [[ ",$STAGES_WANTED," == *",$1,"* ]]; then return 0; fi
  stage "$1" SKIPPED "not in CHECK_STAGES"
  return 1
}
log() { echo "$*" | tee -a "$LOG"; }
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
stage() {  # stage NAME STATUS REASON
  printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$STAGES"
  log "== $1: $2${3:+ ($3)}  [$(( $(date +%s) - START ))s]"
}
# run_limited SECONDS CMD...: runs CMD with a time limit that also respects the overall budget.
run_limited() {
  local want=$1; shift
  local l; l=$(left)
  (( l < 5 )) && return 124
  (( want > l )) && want=$l
  timeout --kill-after=5 "$want" "$@"
}

# --- env ------------------------------------------------------------------------------------------
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1 | sed 's/^/gpu: /'
  nvcc --version 2>&1 | tail -1 | sed 's/^/nvcc: /'
  cmake --version 2>&1 | head -1 | sed 's/^/cmake: /'
  $PY -c 'import torch; print("torch:", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())' 2>&1
} > "$OUT/env.txt"
cat "$OUT/env.txt" | tee -a "$LOG"
if nvidia-smi -L >/dev/null 2>&1; then stage env PASS "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
else stage env FAIL "nvidia-smi found no GPU"; fi

# --- cuBLAS ---------------------------------------------------------------------------------------
CUBLAS_ROOT_ARG=""
[ -n "${METAFORMER_CUBLAS_ROOT:-}" ] && CUBLAS_ROOT_ARG="-DMETAFORMER_CUBLAS_ROOT=$METAFORMER_CUBLAS_ROOT"
[ -z "$CUBLAS_ROOT_ARG" ] && for inc in /usr/local/cuda/include "$(dirname "$(command -v nvcc 2>/dev/null || echo /x/x)")/../include"; do
  if [ -f "$inc/cublas_v2.h" ]; then CUBLAS_ROOT_ARG="-DMETAFORMER_CUBLAS_ROOT=$(cd "$inc/.." && pwd)"; break; fi
done
if [ -z "$CUBLAS_ROOT_ARG" ]; then
  WHEEL=$($PY - <<'PYEOF' 2>/dev/null
import os, glob
try:
    import nvidia
    for base in list(nvidia.__path__):
        for h in glob.glob(os.path.join(base, '**', 'include', 'cublas_v2.h'), recursive=True):
            print(os.path.dirname(os.path.dirname(h))); raise SystemExit
except ImportError:
    pass
PYEOF
)
  [ -n "$WHEEL" ] && CUBLAS_ROOT_ARG="-DMETAFORMER_CUBLAS_ROOT=$WHEEL"
fi
log "cuBLAS: ${CUBLAS_ROOT_ARG:-not found}"

# --- build ----------------------------------------------------------------------------------------
BUILT=0
if [ -z "$CUBLAS_ROOT_ARG" ]; then
  stage build FAIL "cuBLAS not found (neither the toolkit's nor the nvidia-cublas wheel's)"
else
  GEN=""; command -v ninja >/dev/null && GEN="-G Ninja"
  if run_limited 240 bash -c "cmake -S native/cuda/tests -B '$BUILD' $GEN -DCMAKE_BUILD_TYPE=Release $CUBLAS_ROOT_ARG \
        -DCMAKE_CUDA_ARCHITECTURES=\${CUDA_ARCH:-90} && cmake --build '$BUILD' -j \$(nproc)" > "$OUT/build.log" 2>&1 \
     && [ -x "$CHECK" ]; then
    BUILT=1; stage build PASS "$(grep -c 'Building' "$OUT/build.log") objects in $(( $(date +%s) - START ))s"
  else
    tail -30 "$OUT/build.log" | tee -a "$LOG"
    stage build FAIL "see build.log"
  fi
fi
# The checker finds cuBLAS through its RPATH; the wheel's other libraries through LD_LIBRARY_PATH.
if [ -n "${WHEEL:-}" ]; then export LD_LIBRARY_PATH="$WHEEL/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; fi

# --- node: the carried Node, addon and fixtures; the model plans ---------------------------------------
CARRY=${CARRY_DIR:-$ROOT/build-gpu-carry}
NODE=""
NB=${TMPDIR:-/tmp}/metaformer-node
# unpack FILE.xz|FILE.tar.xz DEST: with xz where it is installed, else with Python's lzma
unpack() {
  case "$1" in
    *.tar.xz) if command -v xz >/dev/null; then tar -C "$2" -xJf "$1"; else "$PY" -m tarfile -e "$1" "$2"; fi ;;
    *) if command -v xz >/dev/null; then xz -dc "$1" > "$2"
       else "$PY" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1" "$2"; fi ;;
  esac
}
if [ ! -f "$CARRY/node.xz" ]; then
  stage node SKIPPED "no $CARRY (run bench/gpu/prepare.sh where Node is, carry the folder)"
elif ! { rm -rf "$NB" && mkdir -p "$NB/lib" "$NB/fixtures" node_modules \
         && unpack "$CARRY/node.xz" "$NB/node" && chmod +x "$NB/node" \
         && unpack "$CARRY/libs.tar.xz" "$NB/lib" && unpack "$CARRY/fixtures.tar.xz" "$NB/fixtures" \
         && unpack "$CARRY/nm.tar.xz" node_modules && unpack "$CARRY/dist.tar.xz" .; } > "$OUT/node.log" 2>&1; then
  stage node FAIL "unpacking $CARRY failed (node.log)"
else
  export METAFORMER_ADDON=$CARRY/metaformer.node METAFORMER_FIXTURES=$NB/fixtures
  # The carried libraries (oneDNN, ...) and cuBLAS for Node alone, through a wrapper: PyTorch and the
  # checker keep their own. Node's children (vitest's workers) inherit the variable.
  NLD="$NB/lib"
  for d in ${CUBLAS_ROOT_ARG#-DMETAFORMER_CUBLAS_ROOT=} ${WHEEL:-}; do [ -n "$d" ] && NLD="$NLD:$d/lib:$d/lib64"; done
  printf '#!/bin/sh\nLD_LIBRARY_PATH="%s${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "%s" "$@"\n' "$NLD" "$NB/node" > "$NB/node-run"
  chmod +x "$NB/node-run"
  if info=$("$NB/node-run" -e 'const a = require(process.env.METAFORMER_ADDON); const b = a.buildInfo();
        console.log(process.version, JSON.stringify({ cuda: b.cuda }))' 2>>"$OUT/node.log"); then
    NODE=$NB/node-run
    if ! ls "$PLANS"/*.plan >/dev/null 2>&1; then
      run_limited 60 "$NODE" dist/bench/gpu/export_plans.js "$PLANS" --fixtures "$NB/fixtures" >> "$OUT/node.log" 2>&1 \
        || log "export_plans failed (node.log)"
    fi
    stage node PASS "$info; $(ls "$PLANS"/*.plan 2>/dev/null | wc -l) plans"
  else
    tail -5 "$OUT/node.log" | tee -a "$LOG"
    stage node FAIL "the carried Node could not load the addon (node.log)"
  fi
fi

# --- hostcpu (background): issue 5's bf16 mode on this machine's CPU, on the upper half of the cores -------
HOSTCPU_PID=""
NPROC=$(nproc)
LOWER="0-$(( NPROC / 2 - 1 ))"
if [[ "$STAGES_WANTED" != all && ",$STAGES_WANTED," != *",hostcpu,"* ]]; then :
elif [ -n "$NODE" ] && [ "$NPROC" -ge 8 ]; then
  bash bench/gpu/host_cpu.sh "$NODE" "$PY" "$OUT/hostcpu.txt" "$(( NPROC / 2 ))-$(( NPROC - 1 ))" 4 > "$OUT/hostcpu.log" 2>&1 &
  HOSTCPU_PID=$!
fi
PIN_LOWER=()   # the foreground's Node work stays off the background's cores
if command -v taskset >/dev/null && [ "$NPROC" -ge 8 ]; then PIN_LOWER=(taskset -c "$LOWER"); fi

OURS=$OUT/ours.jsonl
: > "$OURS"
need_build() { if [ $BUILT = 1 ]; then return 0; fi; stage "$1" SKIPPED "the checker did not build"; return 1; }

# --- ops ------------------------------------------------------------------------------------------
if want ops && need_build ops; then
  run_limited 150 "$CHECK" --ops --json "$OUT/ops.part" 2>&1 | tee -a "$LOG" | grep -E '^(FAIL|SKIP)|passed, ' 
  rc=${PIPESTATUS[0]}
  cat "$OUT/ops.part" >> "$OURS" 2>/dev/null; rm -f "$OUT/ops.part"
  summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$LOG" | tail -1)
  if [ "$rc" = 0 ]; then stage ops PASS "$summary"
  elif [ "$rc" = 3 ]; then stage ops SKIPPED "no usable CUDA device"
  elif [ "$rc" = 124 ]; then stage ops FAIL "timed out"
  else stage ops FAIL "${summary:-exit $rc}"; fi
fi

# --- fixtures -------------------------------------------------------------------------------------
if want fixtures && need_build fixtures; then
  if ls "$PLANS"/*_tiny_*.plan >/dev/null 2>&1; then
    run_limited 90 "$CHECK" --plans "$PLANS" --filter _tiny_ --json "$OUT/fx.part" > "$OUT/fx.log" 2>&1
    rc=$?
    # bf16: the logits within 2e-2 of the float64 reference (issue 5's bound for the mode)
    run_limited 60 "$CHECK" --plans "$PLANS" --filter _tiny_logits --precision bf16 --json "$OUT/fx16.part" \
      > "$OUT/fx16.log" 2>&1
    rc16=$?
    cat "$OUT/fx16.part" >> "$OUT/fx.part" 2>/dev/null; cat "$OUT/fx16.log" >> "$OUT/fx.log"
    rm -f "$OUT/fx16.part" "$OUT/fx16.log"
    [ "$rc" = 0 ] && [ "$rc16" != 0 ] && rc=$rc16
    cat "$OUT/fx.log" >> "$LOG"; grep -E '^FAIL' "$OUT/fx.log"
    cat "$OUT/fx.part" >> "$OURS" 2>/dev/null; rm -f "$OUT/fx.part" "$OUT/fx.log"
    summary="$(grep -E '^[0-9]+ passed' "$LOG" | tail -2 | paste -sd ';' -) (fp32; bf16 logits)"
    if [ "$rc" = 0 ]; then stage fixtures PASS "$summary"
    elif [ "$rc" = 3 ]; then stage fixtures SKIPPED "no usable CUDA device"
    else stage fixtures FAIL "${summary} (exit $rc)"; fi
  else
    stage fixtures SKIPPED "no exported plans in $PLANS (run export_plans.js where Node is, carry the folder)"
  fi
fi

# --- kernels --------------------------------------------------------------------------------------
if want kernels && need_build kernels; then
  run_limited 100 "$CHECK" --bench --json "$OUT/k.part" 2>&1 | tee -a "$LOG" | grep -E '^BENCH|^FAIL'
  rc=${PIPESTATUS[0]}
  cat "$OUT/k.part" >> "$OURS" 2>/dev/null; rm -f "$OUT/k.part"
  if [ "$rc" = 0 ]; then stage kernels PASS "$(grep -c '"bench"' "$OURS") timings"
  elif [ "$rc" = 3 ]; then stage kernels SKIPPED "no usable CUDA device"
  else stage kernels FAIL "exit $rc"; fi
fi

# --- models (ours) --------------------------------------------------------------------------------
if want models && need_build models; then
  if ls "$PLANS"/*_s18_b*.plan >/dev/null 2>&1; then
    run_limited 80 "$CHECK" --plans "$PLANS" --filter _s18_ --time-plans --json "$OUT/m.part" 2>&1 | tee -a "$LOG" \
      | grep -E '^BENCH|^PROFILE|^FAIL'
    rc=${PIPESTATUS[0]}
    run_limited 60 "$CHECK" --plans "$PLANS" --filter _s18_ --time-plans --precision bf16 --json "$OUT/m16.part" 2>&1 \
      | tee -a "$LOG" | grep -E '^BENCH|^PROFILE|^FAIL'
    rc16=${PIPESTATUS[0]}
    cat "$OUT/m16.part" >> "$OUT/m.part" 2>/dev/null; rm -f "$OUT/m16.part"
    [ "$rc" = 0 ] && [ "$rc16" != 0 ] && rc=$rc16
    cat "$OUT/m.part" >> "$OURS" 2>/dev/null; rm -f "$OUT/m.part"
    if [ "$rc" = 0 ]; then stage models PASS "$(grep -c '"bench":"model"' "$OURS") timings"
    elif [ "$rc" = 3 ]; then stage models SKIPPED "no usable CUDA device"
    else stage models FAIL "exit $rc"; fi
  else
    stage models SKIPPED "no exported caformer_s18/convformer_s18 plans in $PLANS"
  fi
fi

# --- nodetests: the library's GPU tests through the carried Node ---------------------------------------
if ! want nodetests; then :
elif [ -z "$NODE" ]; then
  stage nodetests SKIPPED "no usable carried Node (see the node stage)"
else
  run_limited 110 "${PIN_LOWER[@]}" "$NODE" node_modules/vitest/vitest.mjs run --project host test/core/device.test.ts test/models/fixtures.test.ts test/cli/device.test.ts \
    test/train/trainer.test.ts \
    --reporter=verbose > "$OUT/nodetests.log" 2>&1
  rc=$?
  grep -E '(✓|×|↓) |FAIL|Tests ' "$OUT/nodetests.log" | grep -v '^ *✓' | tail -40 | tee -a "$LOG"
  summary=$(grep -E '^ +Tests ' "$OUT/nodetests.log" | tail -1 | sed 's/^ *//')
  if grep -q 'on cuda' "$OUT/nodetests.log"; then gpu_cases=$(grep -c 'on cuda' "$OUT/nodetests.log"); else gpu_cases=0; fi
  # the user's path: predict() of a { device: 'cuda' } model from Node (a plan on the device), fp32 and bf16
  METAFORMER_CUDA_GRAPHS=0 run_limited 45 "${PIN_LOWER[@]}" "$NODE" dist/bench/gpu/node_models.js "$OUT/node.part" --models caformer_s18 \
    --batches 1,256 --seconds 1.5 2>&1 \
    | tee -a "$OUT/nodetests.log" | grep -E '^NODE' | tee -a "$LOG"
  cat "$OUT/node.part" >> "$OURS" 2>/dev/null; rm -f "$OUT/node.part"
  if grep -q 'recording a CUDA graph' "$OUT/nodetests.log"; then
    stage nodetests FAIL "a plan could not be recorded: $(grep -m1 'recording a CUDA graph' "$OUT/nodetests.log" | cut -c1-160)"
  elif [ "$rc" = 0 ] && [ "$gpu_cases" -gt 0 ]; then stage nodetests PASS "$summary; $gpu_cases cases on cuda"
  elif [ "$rc" = 0 ]; then stage nodetests FAIL "passed, but no case ran on cuda (is the GPU visible to the addon?)"
  elif [ "$rc" = 124 ]; then stage nodetests FAIL "timed out ($summary)"
  else stage nodetests FAIL "${summary:-exit $rc} (nodetests.log)"; fi
fi

# --- graphs: device plans step by step (METAFORMER_CUDA_GRAPHS=0) checked; predict() timed with graphs ---
if ! want graphs; then :
elif [ -z "$NODE" ]; then
  stage graphs SKIPPED "no usable carried Node (see the node stage)"
else
  METAFORMER_CUDA_GRAPHS=0 run_limited 90 "${PIN_LOWER[@]}" "$NODE" node_modules/vitest/vitest.mjs run --project host \
    test/core/device.test.ts test/models/fixtures.test.ts --reporter=verbose > "$OUT/graphs.log" 2>&1
  rc=$?
  grep -E '(✓|×|↓) |FAIL|Tests |CUDA graph' "$OUT/graphs.log" | grep -v '^ *✓' | tail -30 | tee -a "$LOG"
  summary=$(grep -E '^ +Tests ' "$OUT/graphs.log" | tail -1 | sed 's/^ *//')
  run_limited 45 "${PIN_LOWER[@]}" "$NODE" dist/bench/gpu/node_models.js "$OUT/nodeg.part" \
    --models caformer_s18 --batches 1,256 --seconds 1.5 2>&1 \
    | tee -a "$OUT/graphs.log" | grep -E '^NODEG|CUDA graph' | tee -a "$LOG"
  rcm=${PIPESTATUS[0]}
  cat "$OUT/nodeg.part" >> "$OURS" 2>/dev/null; rm -f "$OUT/nodeg.part"
  if grep -q 'recording a CUDA graph' "$OUT/graphs.log"; then
    stage graphs FAIL "a plan could not be recorded: $(grep -m1 'recording a CUDA graph' "$OUT/graphs.log" | cut -c1-160)"
  elif [ "$rc" = 0 ] && [ "$rcm" = 0 ]; then stage graphs PASS "$summary step by step; predict() timed with graphs"
  else stage graphs FAIL "${summary:-exit $rc} / timings exit $rcm (graphs.log)"; fi
fi

# --- ncu (diagnostics): hardware profiles of the kernels worth tuning -----------------------------------
NCU=$(command -v ncu 2>/dev/null || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
if ! want ncu || ! need_build ncu; then :
elif [ -z "$NCU" ]; then
  stage ncu SKIPPED "ncu not found"
elif (( $(left) < 120 )); then
  stage ncu SKIPPED "no time left ($(left)s)"
else
  run_limited 75 "$NCU" --clock-control none --section SpeedOfLight --section Occupancy --section LaunchStats \
    --section MemoryWorkloadAnalysis "$CHECK" --profile-targets > "$OUT/ncu.txt" 2>&1
  rc=$?
  # kernel | duration | memory % | SM % | achieved occupancy | registers
  $PY - "$OUT/ncu.txt" > "$OUT/ncu.sum" 2>/dev/null <<'PYEOF'
import re, sys
rows, cur = [], None
want = {"Duration": "dur", "Memory Throughput": "mem", "Compute (SM) Throughput": "sm",
        "Achieved Occupancy": "occ", "Registers Per Thread": "regs"}
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"^  (\S.*?) \(\d+, \d+, \d+\)x\(\d+, \d+, \d+\)", line)
    if m:
        f = re.search(r"::(\w+(?:<[^()]*>)?)\(", m.group(1))
        cur = {"name": (f.group(1) if f else m.group(1))[:48]}
        rows.append(cur)
        continue
    if cur is not None:
        for k, key in want.items():
            m = re.match(r"^\s+" + re.escape(k) + r"\s+(\S+)\s+([\d.,]+)\s*$", line)
            if m and key not in cur:
                cur[key] = m.group(2) + ("" if m.group(1) in ("%", "register/thread") else " " + m.group(1))
for r in rows:
    print("NCU  %-48s %14s  mem %6s%%  sm %6s%%  occ %6s%%  regs %s" % (r["name"], r.get("dur", "?"), r.get("mem", "?"),
          r.get("sm", "?"), r.get("occ", "?"), r.get("regs", "?")))
PYEOF
  n=$(grep -c '^NCU' "$OUT/ncu.sum" 2>/dev/null); n=${n:-0}
  cat "$OUT/ncu.sum" >> "$LOG" 2>/dev/null; grep '^NCU' "$OUT/ncu.sum" 2>/dev/null | head -30; rm -f "$OUT/ncu.sum"
  if [ "$rc" = 0 ] && [ "$n" -gt 0 ]; then stage ncu PASS "$n kernels profiled (ncu.txt)"
  else stage ncu SKIPPED "ncu could not profile here (exit $rc; ncu.txt): $(grep -m1 -E 'ERR|rror' "$OUT/ncu.txt" | cut -c1-120)"; fi
fi

# --- torch ----------------------------------------------------------------------------------------
T=$(( $(left) - 25 ))
if ! want torch; then :
elif ! $PY -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
  stage torch SKIPPED "PyTorch with CUDA is not importable"
elif (( T < 30 )); then
  stage torch SKIPPED "no time left (${T}s)"
else
  PYTHONUNBUFFERED=1 run_limited "$T" $PY bench/gpu/torch_peer.py --out "$OUT/torch.jsonl" --deadline $(( T - 10 )) \
    2>&1 | tee -a "$LOG" | grep -E '^(PEER|SKIP|ERROR)'
  rc=${PIPESTATUS[0]}
  n=$(grep -c . "$OUT/torch.jsonl" 2>/dev/null)
  if [ "$rc" = 0 ]; then stage torch PASS "$n timings"
  elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then stage torch PASS "$n timings; stopped at the time limit"
  else stage torch FAIL "exit $rc ($n timings kept)"; fi
fi


# --- hostcpu: collect the background run ------------------------------------------------------------
if ! want hostcpu; then :
elif [ -z "$HOSTCPU_PID" ]; then
  stage hostcpu SKIPPED "needs the carried Node and at least 8 cores"
else
  while kill -0 "$HOSTCPU_PID" 2>/dev/null && (( $(left) > 8 )); do sleep 1; done
  if kill -0 "$HOSTCPU_PID" 2>/dev/null; then
    kill -- "$HOSTCPU_PID" 2>/dev/null; pkill -P "$HOSTCPU_PID" 2>/dev/null
    stage hostcpu FAIL "stopped at the time limit (partial: hostcpu.txt)"
  elif wait "$HOSTCPU_PID"; then
    stage hostcpu PASS "$(grep -m1 '^flags' "$OUT/hostcpu.txt"); $(grep -m1 'bf16Native' "$OUT/hostcpu.txt")"
  else
    stage hostcpu FAIL "the bf16 tests failed on this CPU (hostcpu.txt)"
  fi
  cat "$OUT/hostcpu.txt" >> "$LOG" 2>/dev/null
fi

# --- report ---------------------------------------------------------------------------------------
if $PY bench/gpu/report.py --out "$OUT" >> "$LOG" 2>&1; then stage report PASS "$OUT/RESULTS-gpu.md"
else stage report FAIL "see check.log"; fi
log ""
column -t -s $'\t' "$STAGES" 2>/dev/null || cat "$STAGES"
rm -f "$OUT/stages.tsv.tmp"
# At most 8 files in $OUT: every log but check.log goes into one archive.
(cd "$OUT" && ls env.txt build.log node.log nodetests.log graphs.log hostcpu.txt hostcpu.log ncu.txt 2>/dev/null \
   | xargs -r tar -czf logs.tar.gz --remove-files)
grep -q $'\tFAIL\t' "$STAGES" && exit 1
exit 0
