"""Thread counts for the benchmark scripts. OpenBLAS (used by FAISS for exact batch search
and k-means) reads its thread count when it is loaded, so the scripts call this before
numpy / faiss are imported; this module imports neither."""
import os


def threads_from_argv(argv):
    """The value of --threads (or --threads=N) in argv, else the number of CPUs."""
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--threads="):
            return a.split("=", 1)[1]
    return str(os.cpu_count() or 1)


def set_thread_env(argv, extra=()):
    """Set the thread-count variables (plus `extra` ones, e.g. RAYON_NUM_THREADS) from argv."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS") + tuple(extra):
        os.environ[var] = threads_from_argv(argv)
