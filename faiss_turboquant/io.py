"""FAISS file I/O that knows TurboQuant (see cpp/turboquant_io.h). Paths are written
atomically (temporary file in the same directory, fsync, rename)."""
import os

import faiss
import numpy as np

from . import swigturboquant as _swig


def _check_index(index):
    if not isinstance(index, faiss.Index):
        raise TypeError("expected a faiss.Index, got %s" % type(index).__name__)


def write_index(index, f):
    """Write `index` to a path or a faiss.IOWriter."""
    _check_index(index)
    if isinstance(f, (str, bytes, os.PathLike)):
        _swig.tq_write_index(index, os.fsdecode(f))
    elif isinstance(f, faiss.IOWriter):
        _swig.tq_write_index(index, f)
    else:
        raise TypeError("write_index: expected a path or a faiss.IOWriter, got %r" % (f,))


def read_index(f, io_flags=0):
    """Read an index from a path or a faiss.IOReader (files without TurboQuant are
    read by FAISS itself)."""
    if isinstance(f, (str, bytes, os.PathLike)):
        path = os.fsdecode(f)
        if not os.path.isfile(path):
            raise FileNotFoundError(path)
        return _swig.tq_read_index(path, int(io_flags))
    if isinstance(f, faiss.IOReader):
        return _swig.tq_read_index(f, int(io_flags))
    raise TypeError("read_index: expected a path or a faiss.IOReader, got %r" % (f,))


def serialize_index(index):
    """Index -> uint8 numpy array."""
    writer = faiss.VectorIOWriter()
    write_index(index, writer)
    return faiss.vector_to_array(writer.data)


def deserialize_index(data):
    """uint8 array-like -> index."""
    data = np.ascontiguousarray(data, dtype="uint8")
    if data.ndim != 1:
        raise ValueError("deserialize_index: expected a 1-D uint8 array")
    reader = faiss.VectorIOReader()
    faiss.copy_array_to_vector(data, reader.data)
    return read_index(reader)
