"""atheris (libFuzzer) harness for the index reader.

    python tests/fuzz/make_corpus.py build/fuzz-corpus
    python tests/fuzz/fuzz_reader.py -runs=100000 -timeout=10 -rss_limit_mb=4096 \
        -artifact_prefix=build/fuzz-findings/ build/fuzz-corpus

Every input is handed to faiss_turboquant.deserialize_index. Any Python exception
(RuntimeError from the FAISS / TurboQuant checks, MemoryError, ValueError, ...) is an
accepted outcome; a signal (SIGSEGV, SIGABRT), a libFuzzer timeout or an RSS above
-rss_limit_mb is a finding, written by libFuzzer under -artifact_prefix.

Environment:
  TQ_FUZZ_AS_MB    address-space limit set before fuzzing (default 3072; 0 = none), so an
                   oversized allocation fails as MemoryError instead of eating the machine
                   (inputs that reach it are also counted by tests/fuzz/mutate.py)
  TQ_FUZZ_EXERCISE =1: also search / reconstruct / re-serialise every index that loads

The C++ code is not instrumented for coverage, so libFuzzer's mutations are not coverage
guided on the reader; tests/fuzz/mutate.py adds structure-aware mutations (fields after
each fourcc overwritten with extreme values) and runs each input in a child process.
"""
import hashlib
import os
import re
import resource
import signal
import sys
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import atheris  # noqa: E402
import numpy as np  # noqa: E402

import faiss  # noqa: E402

try:
    import faiss_turboquant as ft  # noqa: E402
except ImportError:
    # the extension is being rebuilt in this tree (e.g. `make build` by someone else while
    # the harness restarts): wait and re-execute, at most ~10 minutes
    tries = int(os.environ.get("TQ_FUZZ_IMPORT_TRIES", "0"))
    if tries >= 60:
        raise
    os.environ["TQ_FUZZ_IMPORT_TRIES"] = str(tries + 1)
    import time

    time.sleep(10)
    os.execv(sys.executable, [sys.executable, os.path.abspath(__file__)] + sys.argv[1:])

faiss.omp_set_num_threads(1)
EXERCISE = os.environ.get("TQ_FUZZ_EXERCISE", "0") == "1"
ACCEPTED = (RuntimeError, MemoryError, ValueError, TypeError, OverflowError)
_Q = {}


def _exercise(idx):
    d = idx.d
    if d <= 0 or d > 4096 or not idx.is_trained:  # FAISS accepts d <= 0 from files
        return
    q = _Q.get(d)
    if q is None:
        q = _Q[d] = np.random.default_rng(0).standard_normal((3, d)).astype("float32")
    for call in (
        lambda: idx.search(q, 5),
        lambda: idx.reconstruct(0) if idx.ntotal > 0 else None,
        lambda: ft.serialize_index(idx),
        lambda: idx.add(q[:2]),
    ):
        try:
            call()
        except ACCEPTED:
            pass


# Coverage proxy. The reader is not compiled with coverage instrumentation, so libFuzzer
# would see every input as equally (un)interesting and shrink the corpus to one byte. We
# give it one feature per (outcome site, bytes consumed by the reader): an input that
# fails at a new check, or gets further into the file, is kept in the corpus.
N_FEATURES = 1 << 14
_BASE = atheris._reserve_counter()
for _ in range(N_FEATURES - 1):
    atheris._reserve_counter()
_DIGITS = re.compile(r"[0-9]+")
_AT = re.compile(r" at ([^ ]+:[0-9]+)")


def _feature(site, consumed):
    atheris._trace_branch(_BASE + zlib.crc32(("%s|%d" % (site, consumed)).encode()) % N_FEATURES)


def _site(exc):
    msg = str(exc)
    m = _AT.search(msg)
    return type(exc).__name__ + (m.group(1) if m else "") + _DIGITS.sub("#", msg[-80:])


try:
    import ctypes

    _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
except (OSError, AttributeError):
    _malloc_trim = None
_PAGE = resource.getpagesize()


# FAISS 1.7.3's reader leaks what it allocated when it throws (raw `new` without RAII:
# e.g. an IndexFlat whose vector was resized to a size read from the file); over many
# malformed inputs the leak fills the address space. When the RSS passes TQ_FUZZ_RESTART_MB
# the harness re-executes itself with the remaining -runs (the corpus directory keeps what
# was learned); every restart is logged with the leaked amount.
RESTART_MB = int(os.environ.get("TQ_FUZZ_RESTART_MB", "1536"))
_DONE = int(os.environ.get("TQ_FUZZ_DONE", "0"))
_TARGET = None
_ARTIFACTS = None
_CORPUS_OUT = None
_COUNT = 0


def _rss_mb():
    with open("/proc/self/statm") as f:
        return (int(f.read().split()[1]) * _PAGE) >> 20


def _maybe_restart():
    if _TARGET is None:
        return
    rss = _rss_mb()
    if rss <= RESTART_MB:
        return
    if _malloc_trim is not None:
        _malloc_trim(0)
        rss = _rss_mb()
        if rss <= RESTART_MB:
            return
    done = _DONE + _COUNT
    sys.stderr.write(
        "tq-fuzz: RSS %d MB after %d inputs (%d inputs leaked > %d MB each in this "
        "process): restarting, %d runs left\n" % (rss, done, _LEAKS[0], LEAK_MB, _TARGET - done))
    sys.stderr.flush()
    args = [a for a in sys.argv[1:] if not a.startswith("-runs=")]
    os.environ["TQ_FUZZ_DONE"] = str(done)
    os.environ["TQ_FUZZ_RESTARTS"] = str(int(os.environ.get("TQ_FUZZ_RESTARTS", "0")) + 1)
    signal.setitimer(signal.ITIMER_REAL, 0)  # libFuzzer's -timeout alarm survives exec
    os.execv(sys.executable, [sys.executable, os.path.abspath(__file__),
                              "-runs=%d" % max(1, _TARGET - done)] + args)


def TestOneInput(data):
    global _COUNT
    _COUNT += 1
    _maybe_restart()
    if _TARGET is not None and _DONE + _COUNT == _TARGET:
        sys.stderr.write("tq-fuzz: %d inputs in total, %s restart(s)\n"
                         % (_TARGET, os.environ.get("TQ_FUZZ_RESTARTS", "0")))
    # == faiss_turboquant.deserialize_index(data), with the reader kept to see how many
    # bytes it consumed
    rss0 = _rss_mb()
    reader = faiss.VectorIOReader()
    faiss.copy_array_to_vector(np.frombuffer(data, dtype="uint8"), reader.data)
    try:
        idx = ft.read_index(reader)
    except ACCEPTED as e:
        if _leaked(rss0, data) or isinstance(e, MemoryError):
            # no feature: inputs that leak or hit the allocation limit are not kept in the
            # corpus (replaying them after each restart would leak again)
            _forget(data)
            return
        _feature(_site(e), reader.rp)
        return
    _feature("ok" + type(idx).__name__, reader.rp)
    if EXERCISE:
        _exercise(idx)


def _forget(data):
    if _CORPUS_OUT:
        try:
            os.unlink(os.path.join(_CORPUS_OUT, hashlib.sha1(data).hexdigest()))
        except OSError:
            pass


_LEAKS = [0]
LEAK_MB = 4


def _leaked(rss0, data):
    if _rss_mb() - rss0 <= LEAK_MB:
        return False
    if _malloc_trim is not None:
        _malloc_trim(0)
    grown = _rss_mb() - rss0
    if grown <= LEAK_MB:
        return False
    _LEAKS[0] += 1
    if _LEAKS[0] <= 20 and _ARTIFACTS is not None:
        name = "%sleak-%dMB-%s" % (_ARTIFACTS, grown, hashlib.sha1(data).hexdigest())
        with open(name, "wb") as f:
            f.write(data)
    return True


def main():
    as_mb = int(os.environ.get("TQ_FUZZ_AS_MB", "3072"))
    if as_mb > 0:
        lim = as_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    global _TARGET, _ARTIFACTS, _CORPUS_OUT
    dirs = [a for a in sys.argv[1:] if not a.startswith("-") and os.path.isdir(a)]
    _CORPUS_OUT = dirs[0] if dirs else None  # libFuzzer names its units by SHA-1
    for a in sys.argv[1:]:
        if a.startswith("-artifact_prefix="):
            _ARTIFACTS = a.split("=", 1)[1]
        if a.startswith("-runs="):
            _TARGET = _DONE + int(a.split("=", 1)[1])
    atheris.Setup(sys.argv, TestOneInput)
    atheris.UpdateCounterArrays()
    atheris.Fuzz()


if __name__ == "__main__":
    main()
