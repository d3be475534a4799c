#!/usr/bin/env bash
# bench/gpu/prepare.sh: packs, on a machine with Node, what bench/gpu/check.sh needs to test the Node
# library on a GPU machine that has no Node: the folder build-gpu-carry/ (about 45 MB; carry it along
# with the working tree). Run from anywhere:
#
#   bash bench/gpu/prepare.sh            (METAFORMER_CUBLAS_ROOT=<dir with include/, lib/> to reuse a cuBLAS)
#
# It writes:
#   node.xz            this machine's Node binary, stripped (check.sh runs the tests with it)
#   libs.tar.xz        the addon's shared libraries that a bare CUDA machine may lack (oneDNN, OpenCL loader)
#   metaformer.node    the addon built with the CUDA backend (sm_90) against cuBLAS
#   dist.tar.xz        the compiled TypeScript (bench/gpu/export_plans.js writes the model plans there)
#   nm.tar.xz          the node_modules that vitest needs (no onnxruntime, no TypeScript compiler)
#   fixtures.tar.xz    the tiny model fixtures (models/*_tiny.safetensors) and their README
# cuBLAS comes from METAFORMER_CUBLAS_ROOT, the CUDA toolkit, or the nvidia-cublas wheel fetched with pip
# into build-gpu-cublas/ (kept for the next run).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
CARRY=$ROOT/build-gpu-carry
FIXTURES=${METAFORMER_FIXTURES:-$ROOT/../shared/fixtures}
say() { echo "prepare: $*"; }

command -v nvcc >/dev/null || { say "nvcc is needed to build the CUDA backend"; exit 1; }
[ -f "$FIXTURES/models/caformer_tiny.safetensors" ] || { say "no model fixtures in $FIXTURES (set METAFORMER_FIXTURES)"; exit 1; }

# --- cuBLAS ---------------------------------------------------------------------------------------
CUBLAS=${METAFORMER_CUBLAS_ROOT:-}
if [ -z "$CUBLAS" ]; then
  inc=$(dirname "$(command -v nvcc)")/../include
  if [ -f "$inc/cublas_v2.h" ]; then CUBLAS=$(cd "$inc/.." && pwd); fi
fi
if [ -z "$CUBLAS" ]; then
  CUBLAS=$ROOT/build-gpu-cublas/nvidia/cu13
  if [ ! -f "$CUBLAS/include/cublas_v2.h" ]; then
    say "fetching the nvidia-cublas wheel (headers and libraries to link against)"
    rm -rf "$ROOT/build-gpu-cublas" && mkdir -p "$ROOT/build-gpu-cublas/whl"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$ROOT/build-gpu-cublas/whl" 'nvidia-cublas>=13,<14'
    (cd "$ROOT/build-gpu-cublas" && python3 -m zipfile -e whl/*.whl . && rm -rf whl)
  fi
fi
say "cuBLAS: $CUBLAS"

# --- build ------------------------------------------------------------------------------------------
say "compiling TypeScript"
npx tsc -p tsconfig.json
say "building the addon with CUDA into build-cuda/ (a few minutes)"
mkdir -p build-cuda
CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} node node_modules/cmake-js/bin/cmake-js compile \
  --out build-cuda --CDMETAFORMER_CUDA=ON "--CDMETAFORMER_CUBLAS_ROOT=$CUBLAS" > build-cuda/prepare.log 2>&1 \
  || { tail -30 build-cuda/prepare.log; say "the CUDA build failed (build-cuda/prepare.log)"; exit 1; }
ADDON=$ROOT/build-cuda/Release/metaformer.node
node -e "const a=require(process.argv[1]); if(!a.buildInfo().cuda) { console.error('addon built without CUDA'); process.exit(1) }" "$ADDON"

# --- pack -------------------------------------------------------------------------------------------
rm -rf "$CARRY" && mkdir -p "$CARRY"
NODE_BIN=$(readlink -f "$(command -v node)")
cp "$NODE_BIN" "$CARRY/node" && strip "$CARRY/node" 2>/dev/null || true
xz -T0 -6 "$CARRY/node"
cp "$ADDON" "$CARRY/metaformer.node"
# Shared libraries of the addon other than the C/C++ runtime, OpenMP and cuBLAS (the GPU machine has those).
LIBS=$(mktemp -d)
ldd "$ADDON" | awk '/=> \//{print $1" "$3}' | while read -r name file; do
  case "$name" in
    libc.so*|libm.so*|libstdc++*|libgcc_s*|libgomp*|libpthread*|libdl.so*|librt.so*|libcublas*) ;;
    *) cp -L "$file" "$LIBS/$name" ;;
  esac
done
tar -C "$LIBS" -cJf "$CARRY/libs.tar.xz" . && rm -rf "$LIBS"
tar -cJf "$CARRY/dist.tar.xz" dist
tar -C node_modules --exclude=./onnxruntime-node --exclude=./onnxruntime-common --exclude=./typescript \
  --exclude=./@types --exclude=./.cache -cJf "$CARRY/nm.tar.xz" .
tar -C "$FIXTURES" -cJf "$CARRY/fixtures.tar.xz" README.md $(cd "$FIXTURES" && ls models/*_tiny.safetensors)
du -sh "$CARRY"/* | sed 's/^/prepare: /'
TREE=$(( $(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1) / 1048576 ))
say "build-gpu-carry: $(du -sm "$CARRY" | cut -f1) MB (+ the tracked tree, ${TREE} MB; 64 MiB may travel)"
say "on the GPU machine: OUT=<dir> bash bench/gpu/check.sh   (with build-gpu-carry/ carried along)"
