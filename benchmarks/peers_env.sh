#!/usr/bin/env bash
# Create (idempotently) the separate "peers" environment used by the benchmark harness:
#   .venv-peers at the repo root (override: PEERS_VENV=...), a plain `python3 -m venv`
#   (NOT --system-site-packages: it must not see the system FAISS 1.7.3 / numpy 1.x), with
#     faiss-cpu==1.15.1   FAISS 1.15 peers: SQtqmse4, SQtq4, EDEN4, RaBitQ4, RaBitQfs4, PQ<d>x4fs
#     numpy (2.x)         whatever faiss-cpu / numba accept
#     turbovec            Rust TurboQuant index (4-bit)
#     nanoindex-rag[fast] the product we replace (import name `nanoindex`); the `fast`
#                         extra pulls numba, nanoindex's own JIT path (without it nanoindex
#                         silently falls back to a much slower NumPy path)
# benchmarks/run_benchmarks.py runs benchmarks/peer_runner.py with this env's python.
# Usage: bash benchmarks/peers_env.sh            (prints the python path at the end)
#        PEERS_NO_NUMBA=1 bash benchmarks/peers_env.sh   (nanoindex without numba)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PEERS_VENV:-$REPO/.venv-peers}"
PYTHON_SYS="${PEERS_PYTHON_SYS:-python3}"
FAISS_VERSION="1.15.1"
NANO_SPEC="nanoindex-rag[fast]"
if [ "${PEERS_NO_NUMBA:-0}" = "1" ]; then NANO_SPEC="nanoindex-rag"; fi

env_ok() {
    [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "$FAISS_VERSION" "${PEERS_NO_NUMBA:-0}" <<'PYEOF' >/dev/null 2>&1
import sys
import numpy, faiss, turbovec, nanoindex
assert faiss.__version__ == sys.argv[1], faiss.__version__
if sys.argv[2] != "1":
    import numba  # noqa: F401
PYEOF
}

if env_ok; then
    echo "[peers_env] $VENV is ready" >&2
else
    echo "[peers_env] setting up $VENV" >&2
    [ -x "$VENV/bin/python" ] || "$PYTHON_SYS" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q --upgrade pip
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q \
        "faiss-cpu==$FAISS_VERSION" numpy turbovec "$NANO_SPEC"
    env_ok || { echo "[peers_env] setup failed: $VENV cannot import faiss $FAISS_VERSION, turbovec, nanoindex" >&2; exit 1; }
fi
"$VENV/bin/python" - <<'PYEOF' >&2
import numpy, faiss, turbovec, importlib.metadata as md
try:
    import numba; nb = numba.__version__
except ImportError:
    nb = "absent"
print("[peers_env] faiss-cpu %s, numpy %s, turbovec %s, nanoindex-rag %s, numba %s"
      % (faiss.__version__, numpy.__version__, md.version("turbovec"), md.version("nanoindex-rag"), nb))
PYEOF
echo "$VENV/bin/python"
