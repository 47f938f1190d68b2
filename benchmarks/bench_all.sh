#!/usr/bin/env bash
# The whole benchmark, then benchmarks/RESULTS.md (generated; never edit it by hand):
#   1. flat comparison on the bundled 10k set   -> benchmarks/results/flat-10k.json
#   2. flat comparison on the 100k real set      -> benchmarks/results/flat-100k.json
#      (built first with benchmarks/make_dataset.sh if missing)
#   3. IVF sweep on the 100k real set + a 1M synthetic set shaped like it -> results/ivf.json
#   4. benchmarks/write_results.py -> benchmarks/RESULTS.md
# The peers (FAISS 1.15.1, turbovec, nanoindex-rag) are measured in the same runs when
# .venv-peers exists (bash benchmarks/peers_env.sh); otherwise their rows say it is absent.
# Environment overrides:
#   PY=.venv/bin/python  BENCH_THREADS=<all cores>  BENCH_BITS=4  BENCH_SYNTHETIC=1000000 (0: skip)
#   BENCH_NPROBES=1,2,4,8,16,32,64,128  BENCH_SKIP_100K=1  BENCH_SKIP_IVF=1
#   BENCH_FLAT_ARGS / BENCH_IVF_ARGS: extra arguments for run_benchmarks.py / bench_ivf.py
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PY="${PY:-$REPO/.venv/bin/python}"
OUT="$REPO/benchmarks/results"
THREADS="${BENCH_THREADS:-$(nproc)}"
BITS="${BENCH_BITS:-4}"
DATA10K="$REPO/data/glosses-minilm-10k.npz"
DATA100K="$REPO/benchmarks/data/glosses-100k.npz"
mkdir -p "$OUT"
inputs=()

echo "[bench] flat, bundled 10k set" >&2
"$PY" benchmarks/run_benchmarks.py --embeddings "$DATA10K" --bits "$BITS" --threads "$THREADS" \
    --json "$OUT/flat-10k.json" ${BENCH_FLAT_ARGS:-}
inputs+=("$OUT/flat-10k.json")

if [ "${BENCH_SKIP_100K:-0}" != "1" ] || [ "${BENCH_SKIP_IVF:-0}" != "1" ]; then
    if [ ! -f "$DATA100K" ]; then
        echo "[bench] building $DATA100K" >&2
        bash benchmarks/make_dataset.sh --n-base 100000 --n-queries 1000 --out "$DATA100K" --dtype float16 --seed 0
    fi
fi
if [ "${BENCH_SKIP_100K:-0}" != "1" ]; then
    echo "[bench] flat, 100k set" >&2
    "$PY" benchmarks/run_benchmarks.py --embeddings "$DATA100K" --bits "$BITS" --threads "$THREADS" \
        --json "$OUT/flat-100k.json" ${BENCH_FLAT_ARGS:-}
    inputs+=("$OUT/flat-100k.json")
fi
if [ "${BENCH_SKIP_IVF:-0}" != "1" ]; then
    echo "[bench] IVF, 100k real + ${BENCH_SYNTHETIC:-1000000} synthetic" >&2
    "$PY" benchmarks/bench_ivf.py --embeddings "$DATA100K" --bits "$BITS" --threads "$THREADS" \
        --synthetic "${BENCH_SYNTHETIC:-1000000}" --nprobes "${BENCH_NPROBES:-1,2,4,8,16,32,64,128}" \
        --json "$OUT/ivf.json" ${BENCH_IVF_ARGS:-}
    inputs+=("$OUT/ivf.json")
fi
"$PY" benchmarks/write_results.py "${inputs[@]}" --output "$REPO/benchmarks/RESULTS.md"
