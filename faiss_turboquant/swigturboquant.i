// SWIG interface of the TurboQuant C++ core. FAISS's headers are %import-ed under
// FAISS's own module name, so our proxies derive from faiss.Index / faiss.IndexIVF and
// share FAISS's SWIG type table: FAISS's wrappers accept our objects and vice versa.
%module(package="faiss_turboquant") swigturboquant

%{
#include <faiss/IndexFlat.h>
#include <faiss/IndexIDMap.h>
#include <faiss/IndexIVFFlat.h>
#include <faiss/IndexPreTransform.h>
#include <faiss/IndexRefine.h>
#include <faiss/IndexShards.h>
#include <faiss/IndexScalarQuantizer.h>
#include <faiss/IndexPQ.h>
#include <faiss/IndexIVFPQ.h>
#include <faiss/IndexHNSW.h>
#include <faiss/impl/FaissException.h>

#include "faiss_compat.h"
#include "scan/code_dot.h"
#include "scan/fast_scan_i8.h"
#include "lloyd_max.h"
#include "rotation.h"
#include "TurboQuantizer.h"
#include "IndexTurboQuant.h"
#include "IndexIVFTurboQuant.h"
#include "turboquant_factory.h"
#include "turboquant_io.h"
%}

%include <stdint.i>
%include <typemaps.i>

typedef uint64_t size_t;
#define __restrict
#define FAISS_API

// std::vector is declared as SWIG's library declares it, so that std::vector<float>
// member variables come back as FAISS's own Float32Vector etc. proxies.
%import <std_vector.i>

%import(module="faiss.swigfaiss") "faiss/MetricType.h"
%import(module="faiss.swigfaiss") "faiss/Index.h"
%import(module="faiss.swigfaiss") "faiss/IndexFlatCodes.h"
%import(module="faiss.swigfaiss") "faiss/impl/io.h"
%import(module="faiss.swigfaiss") "faiss/invlists/InvertedLists.h"
%import(module="faiss.swigfaiss") "faiss/IndexIVF.h"

// Release the GIL around every C++ call (concurrent searches from Python threads run in
// parallel) and turn C++ exceptions into Python ones.
%exception {
    Py_BEGIN_ALLOW_THREADS
    try {
        $action
    } catch (faiss::FaissException& e) {
        PyEval_RestoreThread(_save);
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_RuntimeError, e.what());
        }
        SWIG_fail;
    } catch (std::bad_alloc&) {
        PyEval_RestoreThread(_save);
        PyErr_SetString(PyExc_MemoryError, "std::bad_alloc");
        SWIG_fail;
    } catch (std::exception& e) {
        PyEval_RestoreThread(_save);
        PyErr_SetString(PyExc_RuntimeError, e.what());
        SWIG_fail;
    }
    Py_END_ALLOW_THREADS
}

// FAISS classes an index tree returned by us may be made of: their type descriptors are
// FAISS's (shared table), so objects come back as FAISS's own Python classes.
%types(faiss::IndexIDMap2Template< faiss::Index > *, faiss::IndexIDMapTemplate< faiss::Index > *);

// Indexes returned by our functions come back as their most derived known class.
%define TQ_DOWNCAST(subclass)
    if (dynamic_cast<faiss::subclass*>($1)) {
        $result = SWIG_NewPointerObj($1, $descriptor(faiss::subclass*), $owner);
    } else
%enddef
%define TQ_DOWNCAST2(subclass, longname)
    if (dynamic_cast<faiss::subclass*>($1)) {
        $result = SWIG_NewPointerObj($1, $descriptor(faiss::longname*), $owner);
    } else
%enddef

%typemap(out) faiss::Index* {
    if ($1 == NULL) {
        $result = SWIG_Py_Void();
    } else
    TQ_DOWNCAST(IndexIVFTurboQuant)
    TQ_DOWNCAST(IndexTurboQuant)
    TQ_DOWNCAST2(IndexIDMap2, IndexIDMap2Template< faiss::Index >)
    TQ_DOWNCAST2(IndexIDMap, IndexIDMapTemplate< faiss::Index >)
    TQ_DOWNCAST(IndexPreTransform)
    TQ_DOWNCAST(IndexRefineFlat)
    TQ_DOWNCAST(IndexRefine)
    TQ_DOWNCAST(IndexShards)
    TQ_DOWNCAST(IndexIVFFlat)
    TQ_DOWNCAST(IndexIVFPQ)
    TQ_DOWNCAST(IndexIVFScalarQuantizer)
    TQ_DOWNCAST(IndexHNSWFlat)
    TQ_DOWNCAST(IndexHNSW)
    TQ_DOWNCAST(IndexScalarQuantizer)
    TQ_DOWNCAST(IndexPQ)
    TQ_DOWNCAST(IndexFlatIP)
    TQ_DOWNCAST(IndexFlatL2)
    TQ_DOWNCAST(IndexFlat)
    TQ_DOWNCAST(IndexIVF)
    {
        $result = SWIG_NewPointerObj($1, $descriptor(faiss::Index*), $owner);
    }
}

%newobject faiss::tq_index_factory;
%newobject faiss::tq_read_index;
%newobject faiss::tq_clone_index;

%include "faiss_compat.h"
// internal hooks FAISS calls from C++; the base-class wrappers cover them in Python
%ignore faiss::IndexTurboQuant::get_FlatCodesDistanceComputer;
%ignore faiss::IndexIVFTurboQuant::get_InvertedListScanner;
%ignore faiss::TurboQuantizer::Query::code_dot;
%ignore faiss::TurboQuantizer::Query::code_dot_many;
%ignore faiss::TurboQuantizer::Query::sum_set_bits;
%include "lloyd_max.h"
%include "rotation.h"
%include "TurboQuantizer.h"
%include "IndexTurboQuant.h"
%include "IndexIVFTurboQuant.h"
%include "turboquant_factory.h"
%include "turboquant_io.h"

%inline %{
namespace faiss {
/// non-owning view of an index as its most derived known class
faiss::Index* tq_downcast_index(faiss::Index* index) {
    return index;
}
/// the FAISS release whose headers this module was compiled against
const char* tq_faiss_version_built() {
#define TQ_STR2(x) #x
#define TQ_STR(x) TQ_STR2(x)
    return TQ_STR(FAISS_VERSION_MAJOR) "." TQ_STR(FAISS_VERSION_MINOR) "." TQ_STR(
            FAISS_VERSION_PATCH);
}
/// SIMD level of the scan kernels: 0 portable scalar, 1 AVX2+FMA, 2 AVX-512
int tq_simd_level() {
    return faiss::tq_kernels::simd_level();
}
/// force a SIMD level (-1: best available); returns the level in effect
int tq_set_simd_level(int level) {
    return faiss::tq_kernels::set_simd_level(level);
}
/// whether single queries of this bit width get a SIMD integer fast scan at this level
bool tq_fast_scan_simd(int nbits) {
    return faiss::tq_kernels::fast_scan_i8_single_simd(nbits);
}
/** The 8-bit query of the integer fast scan for x (the index's rotation and codebook):
 * writes its row_length() bytes in stream order to q8 (room for d * 8 + 512 bytes) and
 * returns its bias, so tests can compare the SIMD and portable preparations. The 8-bit
 * query is first prepared for the reversed x in the same object, as the IVF scanner
 * reuses it per list, so bytes a path failed to write would show. Returns -1 (nothing
 * written) for widths the integer scan does not handle. */
long tq_query_i8(const faiss::IndexTurboQuant* index, const float* x, uint8_t* q8) {
    if (index->tq.nbits > 4 || index->tq.qjl_m != 0) {
        return -1;
    }
    faiss::TurboQuantizer::Query query;
    faiss::tq_kernels::QueryI8 out;
    std::vector<float> other(x, x + index->d);
    std::reverse(other.begin(), other.end());
    other[0] += 1.0f;
    index->tq.prepare_query(other.data(), query);
    faiss::tq_kernels::prepare_query_i8(
            query.qrot.data(), index->tq.centroid_table.data(), index->d, index->tq.nbits,
            query.qnorm2, out);
    index->tq.prepare_query(x, query);
    faiss::tq_kernels::prepare_query_i8(
            query.qrot.data(), index->tq.centroid_table.data(), index->d, index->tq.nbits,
            query.qnorm2, out);
    std::copy(out.q8.begin(), out.q8.end(), q8);
    return out.bias;
}
/// the SWIG runtime type-table version this module was generated with
int tq_swig_runtime_version() {
    return SWIG_RUNTIME_VERSION[0] - '0';
}
}
%}
