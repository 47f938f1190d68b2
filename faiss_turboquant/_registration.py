"""Makes FAISS aware of TurboQuant: numpy-friendly methods on our classes and the FAISS
entry points (index_factory, write/read_index, downcast_index, clone_index) replaced by
versions that know our classes and delegate everything else to FAISS's originals."""
import faiss

from . import swigturboquant as _swig

# FAISS's own entry points, kept before we replace them
ORIGINAL = {
    name: getattr(faiss, name)
    for name in ("index_factory", "write_index", "read_index", "downcast_index", "clone_index")
}


def check_faiss_version():
    built = _swig.tq_faiss_version_built()
    if faiss.__version__ != built:
        raise ImportError(
            "faiss_turboquant was compiled against FAISS %s headers but the imported faiss "
            "module is %s; C++ class layouts differ between releases, so rebuild "
            "faiss_turboquant against this FAISS (python setup.py build_ext)."
            % (built, faiss.__version__)
        )


# methods whose first argument is a batch of d-dimensional vectors
_VECTOR_METHODS = ("add", "add_with_ids", "search", "range_search", "train", "assign",
                   "sa_encode", "search_and_reconstruct", "compute_residual")


def _checked(method, name):
    """FAISS's numpy wrappers check shapes with `assert`, which `python -O` removes (C++
    would then read past the buffer): check explicitly and raise ValueError."""
    import functools

    import numpy as np

    @functools.wraps(method)
    def wrapper(self, x, *args, **kwargs):
        if not isinstance(x, np.ndarray):
            x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.d:
            raise ValueError(
                "%s.%s: expected a 2-D array of shape (n, %d), got shape %s"
                % (type(self).__name__, name, self.d, x.shape))
        return method(self, x, *args, **kwargs)

    return wrapper


def register():
    from faiss import class_wrappers

    for cls in (_swig.IndexTurboQuant, _swig.IndexIVFTurboQuant):
        class_wrappers.handle_Index(cls)
    # our classes and the FAISS wrappers our factory builds around them: explicit shape
    # checks that survive python -O (FAISS's are asserts)
    wrappers = [getattr(faiss, n) for n in ("IndexIDMap", "IndexIDMap2", "IndexPreTransform",
                                            "IndexRefine", "IndexRefineFlat", "IndexShards")
                if hasattr(faiss, n)]
    for cls in [_swig.IndexTurboQuant, _swig.IndexIVFTurboQuant] + wrappers:
        for name in _VECTOR_METHODS:
            method = getattr(cls, name, None)  # possibly inherited (IndexIVF's search)
            if method is not None and not getattr(method, "_tq_checked", False):
                wrapped = _checked(method, name)
                wrapped._tq_checked = True
                setattr(cls, name, wrapped)
    # the IVF index keeps a pointer to its coarse quantizer: keep the Python object alive
    faiss.add_ref_in_constructor(_swig.IndexIVFTurboQuant, 0)

    from . import casting, factory, io

    faiss.IndexTurboQuant = _swig.IndexTurboQuant
    faiss.IndexIVFTurboQuant = _swig.IndexIVFTurboQuant
    faiss.index_factory = factory.index_factory
    faiss.write_index = io.write_index
    faiss.read_index = io.read_index
    faiss.downcast_index = casting.downcast_index
    faiss.clone_index = casting.clone_index
