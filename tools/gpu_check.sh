#!/usr/bin/env bash
# One-shot GPU check for sevlm, in under 8 minutes on one GPU (nothing fetched there):
#   1. installs what the GPU machine lacks, from wheels in the repo-ignored .whl/ folder;
#   2. runs the GPU-marked tests;
#   3. tools/gpu_check.py: trains the paper model size with fp16 ZeRO-2 for 50 steps on
#      CLIP-shaped (196x768) features (step time, samples/s, peak memory, MFU, whether
#      micro-batch 32 fits 11 GB), runs tools/bench_generate.py on the GPU, and the GPU FAISS
#      path or its CPU fallback. Its last line is one JSON object of all figures.
#
#   tools/gpu_check.sh            # on the GPU machine, from the repository root
#   tools/gpu_check.sh --dry-run  # here, on the CPU: tiny sizes, GPU-only parts skipped with a reason
# Through the device tool: run "bash tools/gpu_check.sh" with carry [".whl"], timeout_s 540.
# Every stage runs even if one before it failed; the exit code is non-zero if any failed.
#
# Preparing .whl/ (on a machine with pip access, from the repository root; .whl/ is git-ignored,
# never commit wheels). The GPU image has Python 3.12, torch, transformers, h5py, numpy, pyyaml,
# msgpack, ninja, psutil, py-cpuinfo, einops, tqdm, safetensors; it lacks these:
#   P="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $P -d .whl \
#       webdataset==1.0.2 braceexpand==0.1.7 hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 \
#       annotated-types==0.8.0 typing-inspection==0.4.5 faiss-cpu==1.15.1
#   DS_BUILD_OPS=0 python3 -m pip wheel --no-deps --no-build-isolation -w .whl deepspeed==0.19.8   # sdist only: built here (pure Python, ops JIT-built on use)
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl pycocoevalcap==1.2   # training's BLEU-4
#   zip -q -d .whl/pycocoevalcap-1.2-py3-none-any.whl '*.jar' '*.gz'   # 104 MB -> 18 kB: the Java
#       parts (METEOR, SPICE, PTB tokenizer) serve `sevlm evaluate` only, not this check
# About 23 MB in all. faiss-gpu-cu12 is left out: it needs the CUDA 12 runtime and cuBLAS
# wheels (~0.5 GB; the image has CUDA 13's), so the FAISS stage reports its CPU fallback.
set -euo pipefail

DRY=0
for a in "$@"; do
  case "$a" in
    --dry-run) DRY=1 ;;
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $a (expected --dry-run)" >&2; exit 2 ;;
  esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
say() { echo "[gpu_check] $*"; }
t0=$SECONDS

# ---- 1. install what is missing (wheel file prefix : import name) ------------------------------
SITE="${GPU_CHECK_SITE:-/tmp/sevlm-site}"
missing=()
for pair in deepspeed:deepspeed webdataset:webdataset braceexpand:braceexpand hjson:hjson \
            pydantic:pydantic pydantic_core:pydantic_core annotated_types:annotated_types \
            typing_inspection:typing_inspection faiss_cpu:faiss pycocoevalcap:pycocoevalcap; do
  whl="${pair%%:*}" mod="${pair##*:}"
  "$PYTHON" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$mod') is None)" 2>/dev/null || missing+=("$whl")
done
if (( ${#missing[@]} == 0 )); then
  say "install: nothing missing"
elif (( DRY )); then
  say "install: dry run, not installing ${missing[*]}"
else
  files=()
  for w in "${missing[@]}"; do
    f=$(ls .whl/"$w"-*.whl 2>/dev/null | head -1 || true)
    [[ -n "$f" ]] || { echo "gpu_check.sh: $w is missing and .whl/ holds no $w-*.whl (see the preparation at the top)" >&2; exit 1; }
    files+=("$f")
  done
  say "install: ${missing[*]} into $SITE"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${files[@]}"
  export PYTHONPATH="$PYTHONPATH:$SITE"
fi

# ---- 2. GPU-marked tests ------------------------------------------------------------------------
# Only the files that hold GPU tests: the others import packages the GPU image lacks.
mapfile -t gpu_tests < <(grep -rl --include='test_*.py' 'mark.gpu' tests | sort)
if (( DRY )); then
  export CUDA_VISIBLE_DEVICES=""  # a dry run leaves any GPU alone
  say "gpu tests: ${gpu_tests[*]} (dry run: collected and skipped, no CUDA device is used)"
else
  say "gpu tests: ${gpu_tests[*]}"
fi
status=0  # a failing stage is reported, the next still runs, and the exit code says so
timeout 150 "$PYTHON" -m pytest -q -rs -m gpu -p no:cacheprovider "${gpu_tests[@]}" || { status=1; say "gpu tests: FAILED"; }

# ---- 3. training, decoding and FAISS figures ----------------------------------------------------
if (( DRY )); then
  export DS_ACCELERATOR=cpu
  timeout 600 "$PYTHON" tools/gpu_check.py --dry-run ${GPU_CHECK_WORK:+--work "$GPU_CHECK_WORK"} || status=1
else
  timeout 360 "$PYTHON" tools/gpu_check.py ${GPU_CHECK_WORK:+--work "$GPU_CHECK_WORK"} || status=1
fi
say "done in $((SECONDS - t0)) s$( ((status)) && echo ', with failures (see above)')"
exit $status
