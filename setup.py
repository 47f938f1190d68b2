"""Build of faiss_turboquant: the SWIG + C++17 extension over an installed FAISS.

FAISS is found through the importable `faiss` Python module: the extension links the
very library that module loads (Debian/Ubuntu: its `_swigfaiss*.so`; pip wheel / conda:
`libfaiss.so`), so one copy of FAISS lives in the process. Headers come from
FAISS_INCLUDE_DIR (a directory containing faiss/Index.h), else the standard locations.
"""
import glob
import os
import re
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
CPP = os.path.join(HERE, "cpp")
SOURCES = [
    "cpp/lloyd_max.cpp",
    "cpp/rotation.cpp",
    "cpp/TurboQuantizer.cpp",
    "cpp/scan/code_dot.cpp",
    "cpp/scan/code_dot_avx2.cpp",
    "cpp/scan/code_dot_avx512.cpp",
    "cpp/scan/fast_scan_i8.cpp",
    "cpp/IndexTurboQuant.cpp",
    "cpp/IndexIVFTurboQuant.cpp",
    "cpp/turboquant_factory.cpp",
    "cpp/turboquant_io.cpp",
]


def find_faiss():
    """(include_dir, library_dir, library_file, swig_table_version) of the FAISS that
    `import faiss` gives in this interpreter."""
    import faiss

    pkg = os.path.dirname(faiss.__file__)
    libs = glob.glob(os.path.join(pkg, "libfaiss*.so")) + glob.glob(
        os.path.join(pkg, "_swigfaiss.*.so")
    )
    if not libs:
        sys.exit("faiss_turboquant: no FAISS library found next to %s" % faiss.__file__)
    lib = sorted(libs, key=lambda p: ("libfaiss" not in p, "avx" in p))[0]
    swig_so = (glob.glob(os.path.join(pkg, "_swigfaiss.*.so")) or [lib])[0]
    with open(swig_so, "rb") as f:
        m = re.search(rb"swig_runtime_data(\d+)", f.read())
    table = int(m.group(1)) if m else None

    candidates = [os.environ.get("FAISS_INCLUDE_DIR", "")]
    for prefix in (sys.prefix, os.environ.get("CONDA_PREFIX", ""), "/usr/local", "/usr"):
        if prefix:
            candidates.append(os.path.join(prefix, "include"))
    for inc in candidates:
        if inc and os.path.exists(os.path.join(inc, "faiss", "Index.h")):
            return inc, os.path.dirname(lib), os.path.basename(lib), table
    sys.exit(
        "faiss_turboquant: FAISS C++ headers not found. Install libfaiss-dev (Debian/"
        "Ubuntu) or set FAISS_INCLUDE_DIR to the directory that contains faiss/Index.h"
    )


def swig_table_version(swig):
    out = subprocess.run([swig, "-version"], capture_output=True, text=True).stdout
    m = re.search(r"SWIG Version (\d+)\.(\d+)", out)
    if not m:
        sys.exit("faiss_turboquant: cannot run %s" % swig)
    major, minor = int(m.group(1)), int(m.group(2))
    return 5 if (major, minor) >= (4, 4) else 4


class BuildExt(build_ext):
    def run(self):
        inc, libdir, libfile, faiss_table = find_faiss()
        swig = os.environ.get("SWIG", "swig")
        ours = swig_table_version(swig)
        if faiss_table is not None and ours != faiss_table:
            sys.exit(
                "faiss_turboquant: %s produces SWIG type-table version %d but the installed "
                "FAISS module uses %d; the two modules could not exchange objects. Use a "
                "SWIG %s." % (swig, ours, faiss_table, "< 4.4" if faiss_table == 4 else ">= 4.4")
            )
        iface = os.path.join(HERE, "faiss_turboquant", "swigturboquant.i")
        wrap = os.path.join(HERE, "faiss_turboquant", "swigturboquant_wrap.cpp")
        if not os.path.exists(wrap) or any(
            os.path.getmtime(p) > os.path.getmtime(wrap)
            for p in [iface, __file__] + glob.glob(os.path.join(CPP, "**", "*.h"), recursive=True)
        ):
            subprocess.check_call(
                [swig, "-c++", "-python", "-doxygen", "-DSWIGWORDSIZE64", "-I" + inc, "-I" + CPP,
                 "-outdir", os.path.join(HERE, "faiss_turboquant"), "-o", wrap, iface]
            )
        for ext in self.extensions:
            ext.sources = [wrap] + SOURCES
            ext.include_dirs += [inc, CPP, numpy_include()]
            ext.library_dirs += [libdir]
            ext.runtime_library_dirs += [libdir]
            ext.extra_link_args += ["-l:" + libfile, "-lblas", "-fopenmp"]
        if self.inplace:
            # Unlink (not overwrite) the previous module: processes that have it mapped
            # keep their copy instead of crashing on a file truncated under them.
            for old in glob.glob(os.path.join(HERE, "faiss_turboquant", "_swigturboquant*.so")):
                os.unlink(old)
        super().run()


def numpy_include():
    import numpy

    return numpy.get_include()


ext = Extension(
    "faiss_turboquant._swigturboquant",
    sources=[],
    language="c++",
    extra_compile_args=[
        "-std=c++17", "-O3", "-fopenmp", "-fPIC", "-Wno-sign-compare",
        # bit-exact agreement with the Numba reference: no fused multiply-adds in the codec
        "-ffp-contract=off",
    ],
)

setup(
    name="faiss_turboquant",
    version="0.1.0",
    description="TurboQuant vector compression as a FAISS index, plus a RAG vector store",
    packages=["faiss_turboquant"],
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExt},
    python_requires=">=3.9",
    install_requires=["numpy"],
    extras_require={
        "fast": ["numba"],
        "langchain": ["langchain-core"],
        "llamaindex": ["llama-index-core"],
        "bench": ["numba"],
    },
)
