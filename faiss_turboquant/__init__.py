"""TurboQuant vector compression as a real FAISS index.

Importing this package registers TurboQuant with FAISS: `faiss.index_factory` learns the
`TQ<b>` / `TQ<b>q<m>` tokens, `faiss.write_index` / `read_index` (and so
`serialize_index` / `deserialize_index`), `downcast_index` and `clone_index` know our
classes.
"""
import faiss as _faiss

from . import swigturboquant as _swig
from ._registration import check_faiss_version, register

check_faiss_version()

from .swigturboquant import (  # noqa: E402
    IndexIVFTurboQuant,
    IndexTurboQuant,
    LloydMaxCodebook,
    TQRotation,
    TurboQuantizer,
)

register()

from .factory import index_factory  # noqa: E402
from .io import read_index, write_index, serialize_index, deserialize_index  # noqa: E402
from .casting import downcast_index, clone_index  # noqa: E402



def __getattr__(name):
    # the document store pulls in sqlite3 and friends: import it on first use only
    if name in ("NanoIndex", "SearchResult"):
        from . import store

        return getattr(store, name)
    raise AttributeError("module 'faiss_turboquant' has no attribute %r" % name)


__all__ = [
    "NanoIndex",
    "SearchResult",
    "IndexTurboQuant",
    "IndexIVFTurboQuant",
    "TurboQuantizer",
    "LloydMaxCodebook",
    "TQRotation",
    "index_factory",
    "read_index",
    "write_index",
    "serialize_index",
    "deserialize_index",
    "downcast_index",
    "clone_index",
]
