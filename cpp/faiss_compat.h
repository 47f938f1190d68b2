// Every FAISS version difference this project meets is handled here, and only here.
// The same sources build against FAISS 1.7.3 (Debian 12) up to 1.15.
#pragma once

#include <faiss/Index.h>

#define TQ_FAISS_VERSION \
    (FAISS_VERSION_MAJOR * 10000 + FAISS_VERSION_MINOR * 100 + FAISS_VERSION_PATCH)

namespace faiss {
#if TQ_FAISS_VERSION < 10704
// FAISS < 1.7.4 declares idx_t inside Index only; later releases at namespace level.
using idx_t = Index::idx_t;
#endif
} // namespace faiss

// IndexIVF::add_core gained an inverted_list_context argument in 1.8.
#if TQ_FAISS_VERSION >= 10800
#define TQ_ADD_CORE_CONTEXT_PARAM , void* inverted_list_context
#define TQ_ADD_CORE_CONTEXT_ARG , inverted_list_context
#else
#define TQ_ADD_CORE_CONTEXT_PARAM
#define TQ_ADD_CORE_CONTEXT_ARG
#endif

// IndexIVF::get_InvertedListScanner gained a search-parameters argument in 1.11.
#if TQ_FAISS_VERSION >= 11100
#define TQ_SCANNER_PARAMS_PARAM , const IVFSearchParameters* scanner_params
#else
#define TQ_SCANNER_PARAMS_PARAM
#endif

// IndexIVF has by_residual as a member from 1.8 on; before, each subclass kept its own.
#if TQ_FAISS_VERSION >= 10800
#define TQ_IVF_HAS_BY_RESIDUAL 1
#else
#define TQ_IVF_HAS_BY_RESIDUAL 0
#endif

// IndexIVF's hook for training the vector encoder: train_residual until 1.8, train_encoder after.
#if TQ_FAISS_VERSION >= 10800
#define TQ_IVF_TRAIN_ENCODER train_encoder
#else
#define TQ_IVF_TRAIN_ENCODER train_residual
#endif

// From 1.14.1 InvertedListScanner's virtual scan is the ResultHandler one; the heap
// version we override exists as a virtual only before.
#if TQ_FAISS_VERSION < 11401
#define TQ_SCANNER_OVERRIDES_HEAP_SCAN 1
#else
#define TQ_SCANNER_OVERRIDES_HEAP_SCAN 0
#endif
