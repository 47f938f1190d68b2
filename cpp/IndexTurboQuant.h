// Flat TurboQuant index: FAISS's code storage (IndexFlatCodes) over the TurboQuant codec.
#pragma once

#include <faiss/IndexFlatCodes.h>

#include "TurboQuantizer.h"
#include "faiss_compat.h"

namespace faiss {

/** Exhaustive search over TurboQuant codes. Needs no training: the codec is
 * data-oblivious (seeded rotation + Lloyd-Max codebook of the sphere's coordinate law).
 * Distances are estimated from the codes with the query rotated once; the database is
 * never decompressed. Supports METRIC_INNER_PRODUCT and METRIC_L2. */
struct IndexTurboQuant : IndexFlatCodes {
    TurboQuantizer tq;
    /// from this many queries on, search decodes blocks of codes once and scores all
    /// queries with a BLAS matrix product (same estimator, different float rounding)
    idx_t batch_search_threshold = 20;
    /** 1- to 4-bit codes without QJL, on CPUs with AVX-512 VNNI (and, as its
     * reference, at SIMD level scalar): scan with exact 8-bit integer dot products, keep
     * the best max(2k, k + 16) candidates per query, re-score them with the float kernel
     * (returned distances are float-kernel values). From 16 queries on, the same integers
     * come from an integer matrix product (blocks of codes decoded once, queries in panels
     * of 16), so a query gets the same results alone or in a batch. */
    bool use_fast_scan = true;

    IndexTurboQuant();
    IndexTurboQuant(
            idx_t d,
            int nbits,
            size_t qjl_m = 0,
            MetricType metric = METRIC_L2,
            uint64_t seed = 42);

    /// rebuild the codec after its parameters were changed (resets the index)
    void reinit();

    void train(idx_t n, const float* x) override;

    /// validates the input before the code buffer grows, so a rejected add changes nothing
    void add(idx_t n, const float* x) override;

    void search(
            idx_t n,
            const float* x,
            idx_t k,
            float* distances,
            idx_t* labels,
            const SearchParameters* params = nullptr) const override;

    void range_search(
            idx_t n,
            const float* x,
            float radius,
            RangeSearchResult* result,
            const SearchParameters* params = nullptr) const override;

    void sa_encode(idx_t n, const float* x, uint8_t* bytes) const override;
    void sa_decode(idx_t n, const uint8_t* bytes, float* x) const override;

    FlatCodesDistanceComputer* get_FlatCodesDistanceComputer() const override;

    void check_compatible_for_merge(const Index& otherIndex) const override;
};

/// true when two codecs produce interchangeable codes
bool tq_same_codec(const TurboQuantizer& a, const TurboQuantizer& b);

} // namespace faiss
