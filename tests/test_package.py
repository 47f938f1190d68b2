"""The package surface: exports, registration with FAISS, the FAISS version guard."""
import faiss
import numpy as np
import pytest

import faiss_turboquant as ft
from faiss_turboquant import _registration


def test_store_exported_at_top_level():
    from faiss_turboquant.store import NanoIndex, SearchResult

    assert ft.NanoIndex is NanoIndex and ft.SearchResult is SearchResult
    with pytest.raises(AttributeError):
        ft.no_such_thing


def test_registered_with_faiss():
    assert faiss.IndexTurboQuant is ft.IndexTurboQuant
    assert faiss.index_factory is ft.index_factory
    assert faiss.write_index is ft.write_index and faiss.read_index is ft.read_index
    assert faiss.downcast_index is ft.downcast_index and faiss.clone_index is ft.clone_index
    # FAISS's own serialize/deserialize look the names up at call time: they follow
    idx = faiss.index_factory(16, "TQ4")
    idx.add(np.random.rand(20, 16).astype("float32"))
    back = faiss.deserialize_index(faiss.serialize_index(idx))
    assert isinstance(back, ft.IndexTurboQuant) and back.ntotal == 20


def test_version_guard(monkeypatch):
    _registration.check_faiss_version()  # the build matches the imported FAISS
    monkeypatch.setattr(faiss, "__version__", "0.0.1")
    with pytest.raises(ImportError, match="compiled against FAISS"):
        _registration.check_faiss_version()


def test_simd_level_reported():
    assert ft.swigturboquant.tq_simd_level() in (0, 1, 2)
