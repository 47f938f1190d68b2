"""`index_factory` with the TurboQuant tokens TQ<b> and TQ<b>q<m> (see cpp/turboquant_factory.h)."""
import numbers

import faiss

from . import swigturboquant as _swig


def index_factory(d, description, metric=faiss.METRIC_L2):
    """Build an index from a FAISS factory string; TQ<b> / TQ<b>q<m> tokens give
    TurboQuant codecs (e.g. "TQ4", "IVF1024,TQ4", "IDMap,TQ4", "PCA128,TQ4", "TQ4,RFlat").
    Strings without a TQ token are built by FAISS itself."""
    if not isinstance(d, numbers.Integral) or isinstance(d, bool) or d < 1:
        raise ValueError("index_factory: dimension must be a positive integer, got %r" % (d,))
    if not isinstance(description, str):
        raise TypeError("index_factory: description must be a str, got %r" % (description,))
    if metric not in (faiss.METRIC_L2, faiss.METRIC_INNER_PRODUCT) and "TQ" in description:
        raise ValueError("TurboQuant supports METRIC_L2 and METRIC_INNER_PRODUCT only")
    return _swig.tq_index_factory(int(d), description, int(metric))
