// IVF index over TurboQuant codes: FAISS's IndexIVF machinery, our codec and scanner.
#pragma once

#include <faiss/IndexIVF.h>

#include "TurboQuantizer.h"
#include "faiss_compat.h"

namespace faiss {

/** Inverted-file index whose lists hold TurboQuant codes. Training trains the coarse
 * quantizer only: the codec needs none. With by_residual (default) the vector minus
 * its coarse centroid is encoded, which shrinks the quantisation error in proportion
 * to the residual norm; the scanner rotates the query once per query (IP) or once
 * per visited list (L2, where the residual query q - c is needed). */
struct IndexIVFTurboQuant : IndexIVF {
    TurboQuantizer tq;
#if !TQ_IVF_HAS_BY_RESIDUAL
    bool by_residual = true; ///< encode x - centroid instead of x
#endif

    /** As IndexTurboQuant::use_fast_scan, per inverted list: 1-, 2- and 4-bit codes (3
     * with VBMI) without QJL and without an ID selector are scanned with the integer
     * kernel of the flat index; the codes of a list that are among the query's best
     * max(2k, k + 16) approximate distances so far (over all its lists) when the list is
     * done are re-scored with the float kernel, and those are the distances returned. */
    bool use_fast_scan = true;

    /** Pi c (and the QJL projections Psi Pi c) of every coarse centroid: with L2 and
     * residuals the scanner needs the rotated residual query Pi (q - c) per visited list,
     * which is Pi q - Pi c, one subtraction instead of a rotation; with inner product the
     * list's offset <q, c> = <Pi q, Pi c>. Built after training (and on first use for
     * indexes whose quantizer was trained elsewhere). */
    std::vector<float> rotated_centroids, qjl_centroids;

    IndexIVFTurboQuant();
    IndexIVFTurboQuant(
            Index* quantizer,
            size_t d,
            size_t nlist,
            int nbits,
            size_t qjl_m = 0,
            MetricType metric = METRIC_L2,
            uint64_t seed = 42);

    /// rebuild the codec after its parameters were changed (the index must be empty)
    void reinit();

    void TQ_IVF_TRAIN_ENCODER(idx_t n, const float* x) override;

    void train(idx_t n, const float* x) override;

    /// (re)compute rotated_centroids / qjl_centroids from the coarse quantizer
    void update_rotated_centroids();
    /// make sure the rotated centroids match the quantizer (thread-safe)
    void ensure_rotated_centroids() const;

    void encode_vectors(
            idx_t n,
            const float* x,
            const idx_t* list_nos,
            uint8_t* codes,
            bool include_listnos = false) const override;

    void sa_decode(idx_t n, const uint8_t* bytes, float* x) const override;

#ifndef SWIG // Python keeps IndexIVF's (numpy-wrapped) methods; C++ dispatches here
    /** Both check first, in the caller's thread, that the lists can be scanned (with
     * residuals the scanner needs the coarse centroids): FAISS 1.7.3 creates scanners
     * and sets lists inside OpenMP regions, where an exception aborts the process. */
    void search_preassigned(
            idx_t n,
            const float* x,
            idx_t k,
            const idx_t* assign,
            const float* centroid_dis,
            float* distances,
            idx_t* labels,
            bool store_pairs,
            const IVFSearchParameters* params = nullptr,
            IndexIVFStats* stats = nullptr) const override;
    void range_search(
            idx_t n,
            const float* x,
            float radius,
            RangeSearchResult* result,
            const SearchParameters* params = nullptr) const override;
#endif
    /// throws a clear error if the scanner could not visit the lists (see above)
    void check_scannable() const;
    /// throws "<what> needs the coarse centroids ..." if the quantizer cannot reconstruct
    void require_centroids(const char* what) const;

    InvertedListScanner* get_InvertedListScanner(
            bool store_pairs = false,
            const IDSelector* sel = nullptr TQ_SCANNER_PARAMS_PARAM) const override;

    void reconstruct_from_offset(int64_t list_no, int64_t offset, float* recons)
            const override;

    void check_compatible_for_merge(const Index& otherIndex) const override;
};

} // namespace faiss
