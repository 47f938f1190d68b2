"""downcast_index / clone_index that know the TurboQuant classes."""
import faiss

from . import swigturboquant as _swig
from ._registration import ORIGINAL


def downcast_index(index):
    """The most derived Python class for an index (non-owning view, as in FAISS)."""
    if not isinstance(index, faiss.Index):
        raise TypeError("downcast_index: expected a faiss.Index, got %s" % type(index).__name__)
    out = _swig.tq_downcast_index(index)
    if type(out) is faiss.Index:  # not one of the classes we know: ask FAISS
        return ORIGINAL["downcast_index"](index)
    return out


def clone_index(index):
    """Deep copy of an index tree, TurboQuant indexes included."""
    if not isinstance(index, faiss.Index):
        raise TypeError("clone_index: expected a faiss.Index, got %s" % type(index).__name__)
    if _swig.tq_contains_turboquant(index):
        return _swig.tq_clone_index(index)
    return ORIGINAL["clone_index"](index)
