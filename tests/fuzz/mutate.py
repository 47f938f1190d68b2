"""Plain-Python mutation fuzzer for the index reader (faiss_turboquant.deserialize_index).

    python tests/fuzz/mutate.py -n 100000 [--seed 1] [--timeout 10] [--mem-mb 2048]
                                [--findings build/fuzz-findings] [--no-exercise]
                                [--all-truncations] [--minimize]

Inputs are built from the seed corpus (tests/fuzz/make_corpus.py) by
  * truncation (every offset of every seed with --all-truncations, else a sample),
  * random bit flips / byte overwrites,
  * overwriting 1/2/4/8-byte fields (random offsets, biased to the bytes after each
    fourcc tag) with extreme values (0, -1, 2^31-1, 2^32-1, 2^63-1, 2^40, NaN, inf...),
  * duplicating, deleting and inserting byte ranges, splicing two seeds,
and fed one by one to a WORKER SUBPROCESS (limits: RLIMIT_AS = --mem-mb, per-input
wall-clock --timeout). A worker that dies (signal / non-zero exit) is a crash; one that
does not answer in time is a hang; both are saved under --findings and the worker is
restarted. Python exceptions (RuntimeError, MemoryError, ValueError, ...) are accepted
outcomes; MemoryError and inputs whose peak RSS grows by more than --rss-flag-mb are
counted separately (they mean a large allocation was attempted).

With --exercise (default) every index that loads is also searched, reconstructed,
re-serialised and given two vectors to add, so a reader that accepts an inconsistent index is caught too ("crash
after load"). The module is importable: run_fuzz() is used by tests/test_fuzz_reader.py.
"""
import argparse
import collections
import json
import os
import random
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

TAGS = [
    b"TQFl", b"TQIv", b"TQMp", b"TQM2", b"TQPt", b"TQRf", b"TQil",  # ours
    b"IxF2", b"IxFI", b"IxFl", b"IwFl", b"ilar", b"IxMp", b"IxM2", b"IxPT",  # FAISS
    b"PcAm", b"LTra", b"IxRF", b"IxRf",
]

EXTREME_INTS = [
    0, 1, 2, 3, 7, 8, 9, 16, 255, 256, 4096, 4097, 65536, 65537,
    -1, -2, 2**31 - 1, -2**31, 2**32 - 1, 2**32, 2**40, 2**40 - 1, 2**40 + 1,
    2**28, 2**28 + 1, 2**48, 2**62, 2**63 - 1, -2**63, 2**64 - 1,
]
EXTREME_FLOATS = [float("nan"), float("inf"), -float("inf"), -1.0, 0.0, 1e38, 1e-45, 1e6 + 1]


# ----------------------------------------------------------------------------- inputs
def _tag_offsets(data):
    offs = []
    for t in TAGS:
        i = data.find(t)
        while i >= 0:
            offs.append(i)
            i = data.find(t, i + 1)
    return offs or [0]


def _pick_offset(rng, data):
    if not data:
        return 0
    if rng.random() < 0.6:
        base = rng.choice(_tag_offsets(data))
        return min(len(data) - 1, base + rng.randrange(0, 64))
    return rng.randrange(len(data))


def _put_int(buf, off, value, width):
    value &= (1 << (8 * width)) - 1
    raw = value.to_bytes(width, "little")
    buf[off:off + width] = raw[: max(0, len(buf) - off)]


def mutate_once(rng, data, seeds):
    """One random mutation of `data` (bytes) -> (kind, bytes)."""
    buf = bytearray(data)
    r = rng.random()
    if not buf or r < 0.10:
        return "truncate", bytes(buf[: rng.randrange(len(buf) + 1)])
    if r < 0.25:
        for _ in range(rng.randint(1, 4)):
            o = _pick_offset(rng, buf)
            buf[o] ^= 1 << rng.randrange(8)
        return "bitflip", bytes(buf)
    if r < 0.35:
        for _ in range(rng.randint(1, 4)):
            buf[_pick_offset(rng, buf)] = rng.randrange(256)
        return "byte", bytes(buf)
    if r < 0.70:
        o = _pick_offset(rng, buf)
        if rng.random() < 0.15:
            buf[o:o + 4] = struct.pack("<f", rng.choice(EXTREME_FLOATS))[: len(buf) - o]
            return "float", bytes(buf)
        width = rng.choice([1, 2, 4, 4, 8, 8])
        v = rng.choice(EXTREME_INTS)
        if rng.random() < 0.2:
            v += rng.choice([-1, 1])
        _put_int(buf, o, v, width)
        return "field%d" % width, bytes(buf)
    if r < 0.80:  # duplicate a range
        a = rng.randrange(len(buf))
        n = rng.choice([1, 4, 8, 16, 29, 64, rng.randrange(1, len(buf) + 1)])
        chunk = buf[a:a + n]
        at = rng.choice([a, a + len(chunk), rng.randrange(len(buf) + 1)])
        buf[at:at] = chunk
        return "duplicate", bytes(buf)
    if r < 0.88:  # delete a range
        a = rng.randrange(len(buf))
        n = rng.choice([1, 4, 8, rng.randrange(1, len(buf) - a + 1)])
        del buf[a:a + n]
        return "delete", bytes(buf)
    if r < 0.94:  # insert random bytes
        a = rng.randrange(len(buf) + 1)
        buf[a:a] = bytes(rng.randrange(256) for _ in range(rng.choice([1, 4, 8, 16])))
        return "insert", bytes(buf)
    other = rng.choice(seeds)  # splice
    a = rng.randrange(len(buf) + 1)
    b = rng.randrange(len(other) + 1)
    return "splice", bytes(buf[:a]) + other[b:]


def generate(seeds, n, seed=0, all_truncations=False):
    """Yield (kind, name, bytes): n inputs (truncations first, then random mutations)."""
    rng = random.Random(seed)
    names = sorted(seeds)
    blobs = [seeds[k] for k in names]
    count = 0
    # truncations: every offset of every seed, or an even sample (about n/5 of the budget)
    total_len = sum(len(b) for b in blobs)
    stride = 1 if all_truncations else max(1, total_len * 5 // max(n, 1))
    for name, b in zip(names, blobs):
        start = rng.randrange(stride)
        for cut in range(start, len(b), stride):
            if count >= n:
                return
            count += 1
            yield "truncate", name, b[:cut]
    while count < n:
        i = rng.randrange(len(blobs))
        kind, data = mutate_once(rng, blobs[i], blobs)
        for _ in range(rng.choice([0, 0, 0, 1, 2])):  # stacked mutations
            k2, data = mutate_once(rng, data, blobs)
            kind += "+" + k2
        count += 1
        yield kind, names[i], data


# ----------------------------------------------------------------------------- worker
def replay(path, exercise=True):
    """Run one input in this process, printing each step (for gdb / manual checks)."""
    sys.path.insert(0, ROOT)
    import numpy as np

    import faiss_turboquant as ft

    data = np.fromfile(path, dtype="uint8")
    print("read_index ...", flush=True)
    try:
        idx = ft.deserialize_index(data)
    except Exception as e:
        print("  -> %s: %s" % (type(e).__name__, str(e)[:300]), flush=True)
        return
    print("  -> %s d=%d ntotal=%d" % (type(idx).__name__, idx.d, idx.ntotal), flush=True)
    if not exercise or idx.d <= 0 or idx.d > 4096:
        return
    q = np.random.default_rng(0).standard_normal((3, idx.d)).astype("float32")
    steps = [("search k=5", lambda: idx.search(q, 5)),
             ("search k=ntotal+1", lambda: idx.search(q[:1], max(1, min(int(idx.ntotal) + 1, 64)))),
             ("reconstruct(0)", lambda: idx.reconstruct(0) if idx.ntotal > 0 else None),
             ("serialize", lambda: ft.serialize_index(idx)),
             ("add 2 vectors", lambda: idx.add(q[:2])),
             ("search after add", lambda: idx.search(q[:1], 3))]
    for name, call in steps:
        print(name, "...", flush=True)
        try:
            call()
            print("  -> ok", flush=True)
        except Exception as e:
            print("  -> %s: %s" % (type(e).__name__, str(e)[:300]), flush=True)


def worker_main(mem_mb, exercise):
    """Child: read framed inputs from stdin, answer one status line per input."""
    import resource

    sys.path.insert(0, ROOT)
    import numpy as np

    import faiss
    import faiss_turboquant as ft

    faiss.omp_set_num_threads(1)
    if mem_mb > 0:
        lim = mem_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    stdin = sys.stdin.buffer
    out = sys.stdout
    clear_refs = "/proc/self/clear_refs"
    can_reset = os.access(clear_refs, os.W_OK)

    def peak_mb():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) >> 10
        return 0

    def rss_mb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() >> 20

    def reset_peak():
        if can_reset:
            try:
                with open(clear_refs, "w") as f:
                    f.write("5")
            except OSError:
                pass
        return rss_mb()

    try:
        import ctypes

        malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        malloc_trim = None

    def use(idx):
        # exercise an index the reader accepted; exceptions are fine, crashes are not
        d = idx.d
        if d <= 0 or d > 4096 or not idx.is_trained:  # FAISS accepts d <= 0 from files
            return
        q = np.random.default_rng(0).standard_normal((3, d)).astype("float32")
        for call in (
            lambda: idx.search(q, 5),
            lambda: idx.search(q[:1], max(1, min(int(idx.ntotal) + 1, 64))),
            lambda: idx.reconstruct(0) if idx.ntotal > 0 else None,
            lambda: ft.serialize_index(idx),
            lambda: idx.add(q[:2]),  # an index that loaded must also accept vectors
            lambda: idx.search(q[:1], 3),
        ):
            try:
                call()
            except (RuntimeError, MemoryError, ValueError, TypeError, AssertionError):
                pass

    out.write("READY 0\n")
    out.flush()
    while True:
        hdr = stdin.read(4)
        if len(hdr) < 4:
            return
        (n,) = struct.unpack("<I", hdr)
        data = stdin.read(n)
        before = reset_peak()
        status = "ok"
        try:
            idx = ft.deserialize_index(np.frombuffer(data, dtype="uint8"))
        except Exception as e:  # every Python exception is an accepted outcome
            status = type(e).__name__
            idx = None
        if idx is not None and exercise:
            use(idx)
        del idx
        grown = peak_mb() - before if can_reset else 0
        now = rss_mb()
        if now - before > 16 and malloc_trim is not None:
            malloc_trim(0)  # give freed memory back so the next input starts small
            now = rss_mb()
        # peak growth during the input, memory still held after it (leak), current RSS
        out.write("%s %d %d %d\n" % (status, grown, now - before, now))
        out.flush()


class Worker:
    def __init__(self, mem_mb, exercise, stderr_path):
        self.mem_mb, self.exercise, self.stderr_path = mem_mb, exercise, stderr_path
        self.proc = None
        self.buf = b""
        self.last_leak = self.last_rss = 0

    def start(self, attempts=30):
        # a worker that cannot even import (e.g. the extension is being rebuilt by
        # `make build` in the same tree) is retried, not counted as a finding
        for i in range(attempts):
            if self._start_once():
                return
            time.sleep(min(10, 1 + i))
        raise RuntimeError("fuzz worker failed to start: %s" % _stderr_tail(self.stderr_path))

    def _start_once(self):
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--mem-mb", str(self.mem_mb)]
        if not self.exercise:
            cmd.append("--no-exercise")
        self.err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, env=env
        )
        self.buf = b""
        line = self._readline(120)
        if line is None or not line.startswith("READY"):
            self.stop()
            return False
        return True

    def _readline(self, timeout):
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return ""  # EOF: the worker died
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def run(self, data, timeout):
        """-> ("ok"|exception name, peak_rss_mb) or ("CRASH", signal/rc) or ("HANG", None)."""
        if self.proc is None:
            self.start()
        try:
            self.proc.stdin.write(struct.pack("<I", len(data)) + data)
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        line = self._readline(timeout)
        if line is None:
            self.stop()
            return "HANG", None
        if line == "":
            rc = self.proc.wait()
            self.proc = None
            self.err.close()
            return "CRASH", rc
        status, grown, leaked, rss = line.split()
        self.last_leak, self.last_rss = int(leaked), int(rss)
        return status, int(grown)

    def stop(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
            self.err.close()


def _stderr_tail(path, n=1500):
    try:
        with open(path, "rb") as f:
            data = f.read()
        return data[-n:].decode(errors="replace")
    except OSError:
        return ""


def describe_rc(rc):
    if rc is None:
        return "hang"
    if rc < 0:
        try:
            return "signal %s" % signal.Signals(-rc).name
        except ValueError:
            return "signal %d" % -rc
    return "exit code %d" % rc


def minimize(data, timeout=10.0, mem_mb=2048, exercise=True, budget_s=300):
    """Shrink a crashing input (chunk deletion, then byte zeroing) while it still crashes
    with the same return code."""
    stderr_path = tempfile.mktemp(prefix="tq-fuzz-min-")
    w = Worker(mem_mb, exercise, stderr_path)
    status, rc0 = w.run(data, timeout)
    if status not in ("CRASH", "HANG"):
        w.stop()
        return data

    def still(d):
        s, rc = w.run(d, timeout)
        return s == status and rc == rc0

    t0 = time.monotonic()
    cur = bytes(data)
    chunk = max(1, len(cur) // 2)
    while chunk >= 1 and time.monotonic() - t0 < budget_s:
        i = 0
        changed = False
        while i < len(cur) and time.monotonic() - t0 < budget_s:
            cand = cur[:i] + cur[i + chunk:]
            if cand and still(cand):
                cur = cand
                changed = True
            else:
                i += chunk
        if not changed:
            chunk //= 2
    w.stop()
    try:
        os.unlink(stderr_path)
    except OSError:
        pass
    return cur


def run_fuzz(n, seed=0, timeout=10.0, mem_mb=2048, exercise=True, findings_dir=None,
             all_truncations=False, rss_flag_mb=512, seeds=None, log=None, max_seconds=None,
             leak_flag_mb=16, recycle_mb=1024):
    """Run n inputs; returns a summary dict (crashes/hangs listed with saved file paths)."""
    if seeds is None:
        sys.path.insert(0, HERE)
        import make_corpus

        seeds = make_corpus.seeds()
    if findings_dir:
        os.makedirs(findings_dir, exist_ok=True)
    stderr_path = tempfile.mktemp(prefix="tq-fuzz-stderr-")
    w = Worker(mem_mb, exercise, stderr_path)
    w.start()
    leaks, recycled = [], 0
    outcomes = collections.Counter()
    by_kind = collections.Counter()
    crashes, hangs, big_rss = [], [], []
    t0 = time.monotonic()
    done = 0
    for kind, name, data in generate(seeds, n, seed, all_truncations):
        if max_seconds is not None and time.monotonic() - t0 > max_seconds:
            break
        status, extra = w.run(data, timeout)
        done += 1
        outcomes[status] += 1
        if status in ("CRASH", "HANG"):
            rec = {
                "input": done - 1,
                "kind": kind,
                "seed": name,
                "size": len(data),
                "outcome": describe_rc(extra) if status == "CRASH" else "hang > %gs" % timeout,
                "stderr": _stderr_tail(stderr_path) if status == "CRASH" else "",
                "hex": data[:256].hex(),
            }
            if findings_dir:
                p = os.path.join(findings_dir, "%s-%06d-%s.bin" % (status.lower(), done - 1, name))
                with open(p, "wb") as f:
                    f.write(data)
                rec["file"] = p
            (crashes if status == "CRASH" else hangs).append(rec)
            by_kind[kind.split("+")[0]] += 1
            w.start()
            continue
        if w.last_leak > leak_flag_mb:
            rec = {"input": done - 1, "seed": name, "kind": kind, "status": status,
                   "leaked_mb": w.last_leak}
            if findings_dir and len(leaks) < 50:
                p = os.path.join(findings_dir, "leak-%06d-%s.bin" % (done - 1, name))
                with open(p, "wb") as f:
                    f.write(data)
                rec["file"] = p
            leaks.append(rec)
        if w.last_rss > recycle_mb:  # leaked memory accumulates: fresh worker
            recycled += 1
            w.stop()
            w.start()
        if extra is not None and extra > rss_flag_mb:
            rec = {"input": done - 1, "seed": name, "kind": kind, "status": status,
                   "peak_growth_mb": extra}
            if findings_dir and len(big_rss) < 50:
                p = os.path.join(findings_dir, "alloc-%06d-%s.bin" % (done - 1, name))
                with open(p, "wb") as f:
                    f.write(data)
                rec["file"] = p
            big_rss.append(rec)
        if log and done % 10000 == 0:
            log("%d inputs, %.0f s, %s" % (done, time.monotonic() - t0, dict(outcomes)))
    w.stop()
    try:
        os.unlink(stderr_path)
    except OSError:
        pass
    return {
        "inputs": done,
        "seconds": round(time.monotonic() - t0, 1),
        "outcomes": dict(outcomes),
        "crashes": crashes,
        "hangs": hangs,
        "large_allocations": big_rss,
        "leaks": leaks,
        "worker_recycled_for_leaks": recycled,
        "crash_kinds": dict(by_kind),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=100000, help="number of inputs")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=10.0, help="per-input seconds")
    ap.add_argument("--mem-mb", type=int, default=2048, help="RLIMIT_AS of the worker")
    ap.add_argument("--rss-flag-mb", type=int, default=512)
    ap.add_argument("--findings", default=os.path.join(ROOT, "build", "fuzz-findings"))
    ap.add_argument("--all-truncations", action="store_true")
    ap.add_argument("--no-exercise", dest="exercise", action="store_false")
    ap.add_argument("--minimize", action="store_true", help="minimise every crash found")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="write the summary here")
    ap.add_argument("--replay", metavar="FILE", help="run one input in-process, verbosely")
    a = ap.parse_args(argv)
    if a.worker:
        worker_main(a.mem_mb, a.exercise)
        return 0
    if a.replay:
        replay(a.replay, a.exercise)
        return 0
    res = run_fuzz(a.n, a.seed, a.timeout, a.mem_mb, a.exercise, a.findings,
                   a.all_truncations, a.rss_flag_mb,
                   log=lambda s: print(s, file=sys.stderr, flush=True))
    if a.minimize:
        for rec in res["crashes"] + res["hangs"]:
            with open(rec["file"], "rb") as f:
                small = minimize(f.read(), a.timeout, a.mem_mb, a.exercise)
            p = rec["file"][:-4] + ".min.bin"
            with open(p, "wb") as f:
                f.write(small)
            rec["minimized"] = p
            rec["minimized_hex"] = small.hex()
    text = json.dumps(res, indent=1)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text)
    summary = dict(res)
    for k in ("crashes", "hangs", "large_allocations", "leaks"):
        summary[k] = len(res[k])
    print(json.dumps(summary))
    for rec in res["crashes"][:20] + res["hangs"][:20]:
        print("FINDING", rec["outcome"], rec["kind"], rec["seed"], rec.get("file", ""))
    return 1 if res["crashes"] or res["hangs"] else 0


if __name__ == "__main__":
    sys.exit(main())
