#include "IndexIVFTurboQuant.h"

#include <memory>
#include <mutex>

#include <faiss/impl/AuxIndexStructures.h>
#include <faiss/impl/FaissAssert.h>
#include <faiss/impl/IDSelector.h>
#include <faiss/utils/Heap.h>
#include <faiss/utils/distances.h>

#include "IndexTurboQuant.h"
#include "scan/code_dot.h"
#include "scan/fast_scan_i8.h"

namespace faiss {

IndexIVFTurboQuant::IndexIVFTurboQuant() {
    by_residual = true;
}

IndexIVFTurboQuant::IndexIVFTurboQuant(
        Index* quantizer,
        size_t d,
        size_t nlist,
        int nbits,
        size_t qjl_m,
        MetricType metric,
        uint64_t seed)
        : IndexIVF(quantizer, d, nlist, 0, metric) {
    FAISS_THROW_IF_NOT_MSG(nlist >= 1, "TurboQuant: nlist must be >= 1");
    FAISS_THROW_IF_NOT_MSG(
            metric == METRIC_L2 || metric == METRIC_INNER_PRODUCT,
            "TurboQuant: only METRIC_L2 and METRIC_INNER_PRODUCT are supported");
    by_residual = true;
    tq.d = d;
    tq.nbits = nbits;
    tq.qjl_m = qjl_m;
    tq.seed = seed;
    reinit();
}

void IndexIVFTurboQuant::reinit() {
    FAISS_THROW_IF_NOT_MSG(
            ntotal == 0, "TurboQuant: the codec of a non-empty index cannot change");
    FAISS_THROW_IF_NOT_MSG(
            tq.d == size_t(d), "TurboQuant: codec dimension differs from index");
    tq.init();
    code_size = tq.code_size;
    if (invlists) {
        FAISS_THROW_IF_NOT(invlists->nlist == nlist);
        // the inverted lists are empty: give them the new code size
        replace_invlists(new ArrayInvertedLists(nlist, code_size), true);
    }
    update_rotated_centroids(); // the rotation may have changed
}

void IndexIVFTurboQuant::TQ_IVF_TRAIN_ENCODER(idx_t, const float*) {
    // data-oblivious codec: nothing to train beyond the coarse quantizer
}

void IndexIVFTurboQuant::train(idx_t n, const float* x) {
    IndexIVF::train(n, x);
    update_rotated_centroids();
}

void IndexIVFTurboQuant::update_rotated_centroids() {
    std::vector<float> rc, qc;
    if (quantizer && quantizer->ntotal == idx_t(nlist) && tq.code_size > 0) {
        std::vector<float> cent(nlist * d);
        // one by one, not reconstruct_n: FAISS runs that in an OpenMP region, where the
        // exception of a quantizer that cannot reconstruct (IndexIDMap, ...) would abort
        // the process; such a quantizer leaves the cache empty (see ensure_rotated_centroids)
        try {
            for (size_t l = 0; l < nlist; l++) {
                quantizer->reconstruct(l, cent.data() + l * d);
            }
        } catch (const FaissException&) {
            rotated_centroids.clear();
            qjl_centroids.clear();
            return;
        }
        rc.resize(nlist * d);
        tq.rotation.apply(nlist, cent.data(), rc.data());
        if (tq.qjl_m > 0) {
            qc.resize(nlist * tq.qjl_m);
            TurboQuantizer::Query qs;
            for (size_t l = 0; l < nlist; l++) {
                tq.prepare_query(cent.data() + l * d, qs);
                std::copy(qs.qjl_proj.begin(), qs.qjl_proj.end(), qc.begin() + l * tq.qjl_m);
            }
        }
    }
    rotated_centroids.swap(rc);
    qjl_centroids.swap(qc);
}

void IndexIVFTurboQuant::ensure_rotated_centroids() const {
    static std::mutex mutex;
    std::lock_guard<std::mutex> lock(mutex);
    if (rotated_centroids.size() != nlist * d ||
        qjl_centroids.size() != (tq.qjl_m > 0 ? nlist * tq.qjl_m : 0)) {
        const_cast<IndexIVFTurboQuant*>(this)->update_rotated_centroids();
    }
    if (rotated_centroids.size() != nlist * d) {
        require_centroids("search with residuals"); // the reason, if that is the one
        FAISS_THROW_MSG("TurboQuant: the coarse centroids are not available");
    }
}

void IndexIVFTurboQuant::encode_vectors(
        idx_t n,
        const float* x,
        const idx_t* list_nos,
        uint8_t* codes,
        bool include_listnos) const {
    const size_t coarse_size = include_listnos ? coarse_code_size() : 0;
    const size_t stride = coarse_size + code_size;
    tq.check_finite(n, x, "input");
    for (idx_t i = 0; i < n; i++) { // a broken quantizer must not make us read out of bounds
        FAISS_THROW_IF_NOT_FMT(
                list_nos[i] >= -1 && list_nos[i] < idx_t(nlist),
                "TurboQuant: invalid list number %lld from the coarse quantizer",
                (long long)list_nos[i]);
    }
    if (by_residual && n > 0) { // outside the parallel loop, whose exceptions would abort
        require_centroids("residual encoding");
    }
    // blocks of residuals and codes, reused: a whole add block of FAISS's (up to 65536
    // vectors) would take n x d floats of residuals (~100 MB at d = 384), and clearing
    // those pages cost ~10% of an add
    const idx_t bs = 4096;
    const size_t nb_max = size_t(std::min(n, bs));
    std::vector<float> residuals(by_residual ? nb_max * d : 0);
    std::vector<uint8_t> tmp(coarse_size ? nb_max * code_size : 0);
    for (idx_t i0 = 0; i0 < n; i0 += bs) {
        const idx_t nb = std::min(bs, n - i0);
        const float* src = x + i0 * d;
        if (by_residual) {
#pragma omp parallel for if (nb > 1000)
            for (idx_t i = 0; i < nb; i++) {
                float* r = residuals.data() + i * d;
                if (list_nos[i0 + i] >= 0) {
                    quantizer->compute_residual(x + (i0 + i) * d, r, list_nos[i0 + i]);
                } else {
                    std::fill_n(r, d, 0.0f);
                }
            }
            src = residuals.data();
        }
        if (coarse_size == 0) {
            tq.encode(nb, src, codes + i0 * code_size);
            continue;
        }
        tq.encode(nb, src, tmp.data());
        for (idx_t i = 0; i < nb; i++) {
            uint8_t* out = codes + (i0 + i) * stride;
            encode_listno(list_nos[i0 + i], out);
            std::memcpy(out + coarse_size, tmp.data() + i * code_size, code_size);
        }
    }
}

void IndexIVFTurboQuant::sa_decode(idx_t n, const uint8_t* bytes, float* x) const {
    const size_t coarse_size = coarse_code_size();
    std::vector<float> centroid(d);
    for (idx_t i = 0; i < n; i++) {
        const uint8_t* code = bytes + i * (coarse_size + code_size);
        int64_t list_no = decode_listno(code);
        float* xi = x + i * d;
        tq.decode(1, code + coarse_size, xi);
        if (by_residual) {
            quantizer->reconstruct(list_no, centroid.data());
            for (size_t j = 0; j < size_t(d); j++) {
                xi[j] += centroid[j];
            }
        }
    }
}

void IndexIVFTurboQuant::reconstruct_from_offset(
        int64_t list_no,
        int64_t offset,
        float* recons) const {
    const uint8_t* code = invlists->get_single_code(list_no, offset);
    tq.decode(1, code, recons);
    invlists->release_codes(list_no, code);
    if (by_residual) {
        std::vector<float> centroid(d);
        quantizer->reconstruct(list_no, centroid.data());
        for (size_t j = 0; j < size_t(d); j++) {
            recons[j] += centroid[j];
        }
    }
}

void IndexIVFTurboQuant::check_compatible_for_merge(const Index& otherIndex) const {
    IndexIVF::check_compatible_for_merge(otherIndex);
    auto* other = dynamic_cast<const IndexIVFTurboQuant*>(&otherIndex);
    FAISS_THROW_IF_NOT_MSG(
            other && tq_same_codec(tq, other->tq) && other->by_residual == by_residual,
            "TurboQuant: IVF indexes to merge must share codec parameters and "
            "by_residual");
}

namespace {

/// Scans inverted lists of TurboQuant codes for one query at a time.
struct IVFTurboQuantScanner : InvertedListScanner {
    const IndexIVFTurboQuant& ivf;
    const bool l2;
    TurboQuantizer::Query query;
    float offset = 0; ///< IP with residuals: <q, centroid of the list>

    IVFTurboQuantScanner(
            const IndexIVFTurboQuant& ivf,
            bool store_pairs,
            const IDSelector* sel)
            : ivf(ivf), l2(ivf.metric_type == METRIC_L2) {
        this->store_pairs = store_pairs;
        this->sel = sel;
        this->keep_max = !l2;
        this->code_size = ivf.code_size;
        // the flat index's rule (IndexTurboQuant.cpp fast_scan_eligible)
        fast = ivf.use_fast_scan && !sel && ivf.tq.qjl_m == 0 &&
                tq_kernels::fast_scan_i8_usable(ivf.tq.nbits);
    }

    TurboQuantizer::Query base; ///< the query itself, rotated once per query

    // ---- integer fast scan (see IndexIVFTurboQuant::use_fast_scan) ----
    bool fast = false;
    tq_kernels::QueryI8 q8; ///< the 8-bit form of `query`
    bool q8_per_list = false;
    /// best approximate distances of the query so far, over all its lists (a heap of
    /// max(2k, k + 16)); reset by set_query, sized on the first scan_codes
    mutable std::vector<float> approx;
    mutable std::vector<idx_t> approx_ids;
    mutable std::vector<float> cand_dis;
    mutable std::vector<uint32_t> cand_pos;

    void set_query(const float* x) override {
        ivf.tq.prepare_query(x, base);
        query = base;
        approx.clear();
        // L2 with residuals has a query per list; otherwise one for all lists
        q8_per_list = ivf.by_residual && l2;
        if (fast && !q8_per_list) {
            prepare_q8();
        }
    }

    void prepare_q8() {
        tq_kernels::prepare_query_i8(
                query.qrot.data(), ivf.tq.centroid_table.data(), ivf.d, ivf.tq.nbits,
                query.qnorm2, q8);
    }

    void set_list(idx_t list_no, float /*coarse_dis*/) override {
        this->list_no = list_no;
        offset = 0;
        if (!ivf.by_residual) {
            return;
        }
        FAISS_THROW_IF_NOT_MSG(
                ivf.rotated_centroids.size() == ivf.nlist * size_t(ivf.d),
                "TurboQuant: the coarse centroids are not available (see "
                "IndexIVFTurboQuant::check_scannable)");
        const size_t d = ivf.d;
        const float* rc = ivf.rotated_centroids.data() + list_no * d;
        if (l2) {
            // ||q - c - r||^2 needs the residual query Pi (q - c) = Pi q - Pi c
            const size_t m = ivf.tq.qjl_m;
            // eight partial sums: one chain of d dependent double adds took as long as
            // scanning a short list
            double n2[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            size_t j = 0;
            for (; j + 8 <= d; j += 8) { // the inner loop vectorises
                for (size_t t = 0; t < 8; t++) {
                    const float r = base.qrot[j + t] - rc[j + t];
                    query.qrot[j + t] = r;
                    n2[t] += double(r) * r;
                }
            }
            for (; j < d; j++) {
                query.qrot[j] = base.qrot[j] - rc[j];
                n2[j % 8] += double(query.qrot[j]) * query.qrot[j];
            }
            query.qnorm2 = float(((n2[0] + n2[1]) + (n2[2] + n2[3])) +
                                 ((n2[4] + n2[5]) + (n2[6] + n2[7]))); // rotations preserve norms
            if (m > 0) {
                const float* qc = ivf.qjl_centroids.data() + list_no * m;
                float sum = 0;
                for (size_t k = 0; k < m; k++) {
                    query.qjl_proj[k] = base.qjl_proj[k] - qc[k];
                    sum += query.qjl_proj[k];
                }
                query.qjl_proj_sum = sum;
            }
            if (fast) {
                prepare_q8();
            }
        } else {
            // <q, c> = <Pi q, Pi c> from the cached rotated centroids: no copy of the
            // centroid and no call into the quantizer per visited list (that cost as much
            // as scanning a short list). The coarse distance is not used: callers of
            // search_preassigned may pass placeholders (FAISS's contrib ivf_tools passes
            // zeros), and not every quantizer ranks lists by <q, c>.
            // eight partial sums rather than fvec_inner_product: with Debian's FAISS that
            // measured 15% fewer QPS at nprobe 16 (its generic build is not vectorised)
            float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            size_t j = 0;
            for (; j + 8 <= d; j += 8) { // the inner loop vectorises
                for (size_t t = 0; t < 8; t++) {
                    part[t] += base.qrot[j + t] * rc[j + t];
                }
            }
            for (; j < d; j++) {
                part[j % 8] += base.qrot[j] * rc[j];
            }
            offset = ((part[0] + part[1]) + (part[2] + part[3])) +
                    ((part[4] + part[5]) + (part[6] + part[7]));
        }
    }

    /* The integer scan of one list: candidates against the query's approximate heap (its
     * top at the start of each block of 1024 codes, as in the flat scan); the codes of the
     * list still in that heap at the end are re-scored with the float kernel into the
     * caller's heap. */
    template <class C>
    size_t scan_fast(
            size_t n,
            const uint8_t* codes,
            const idx_t* ids,
            float* simi,
            idx_t* idxi,
            size_t k) const {
        const size_t k2 = tq_kernels::fast_scan_candidates(k), bs = 1024;
        if (approx.size() != k2) {
            approx.resize(k2);
            approx_ids.resize(k2);
            heap_heapify<C>(k2, approx.data(), approx_ids.data());
            cand_dis.resize(bs + 16);
            cand_pos.resize(bs + 16);
        }
        size_t nup = 0;
        for (size_t j0 = 0; j0 < n; j0 += bs) {
            const size_t nb = std::min(bs, n - j0);
            const uint8_t* block = codes + j0 * code_size;
            // approximate distances without the list's offset (IP with residuals)
            const size_t nc = tq_kernels::scan_i8(
                    block, code_size, nb, ivf.tq.factors_offset(), q8, l2,
                    approx[0] - offset, cand_dis.data(), cand_pos.data());
            for (size_t c = 0; c < nc; c++) {
                const float a = cand_dis[c] + offset;
                if (C::cmp(approx[0], a)) {
                    heap_replace_top<C>(
                            k2, approx.data(), approx_ids.data(), a, idx_t(j0 + cand_pos[c]));
                }
            }
        }
        // re-score the codes of this list that are still among the approximate best (the
        // others were pushed out by better codes of the same list: fewer float kernels
        // than re-scoring each candidate as it comes); entries of earlier lists are -1
        for (size_t i = 0; i < k2; i++) {
            const idx_t jj = approx_ids[i];
            if (jj < 0) {
                continue;
            }
            approx_ids[i] = -1;
            const float dis = distance_to_code(codes + jj * code_size);
            if (C::cmp(simi[0], dis)) {
                const idx_t id = store_pairs ? lo_build(list_no, jj) : ids[jj];
                heap_replace_top<C>(k, simi, idxi, dis, id);
                nup++;
            }
        }
        return nup;
    }

    float distance_to_code(const uint8_t* code) const override {
        return offset + ivf.tq.estimate_distance(query, code, l2);
    }

#if TQ_SCANNER_OVERRIDES_HEAP_SCAN
    // the id a selector sees (FAISS passes no ids when store_pairs is set)
    idx_t id_of(const idx_t* ids, size_t j) const {
        return ids ? ids[j] : idx_t(lo_build(list_no, j));
    }

    template <class C>
    size_t scan_heap(
            size_t n,
            const uint8_t* codes,
            const idx_t* ids,
            float* simi,
            idx_t* idxi,
            size_t k) const {
        size_t nup = 0;
        const size_t bs = 256;
        float buf[bs];
        for (size_t j0 = 0; j0 < n; j0 += bs) {
            const size_t nb = std::min(bs, n - j0);
            const uint8_t* block = codes + j0 * code_size;
            if (sel) {
                for (size_t j = 0; j < nb; j++) {
                    buf[j] = sel->is_member(id_of(ids, j0 + j))
                            ? distance_to_code(block + j * code_size)
                            : (C::cmp(0, 1) ? -HUGE_VALF : HUGE_VALF); // never kept
                }
            } else {
                ivf.tq.estimate_distances(query, block, nb, l2, buf);
                for (size_t j = 0; j < nb; j++) {
                    buf[j] += offset;
                }
            }
            for (size_t j = 0; j < nb; j++) {
                if (C::cmp(simi[0], buf[j])) {
                    size_t jj = j0 + j;
                    idx_t id = store_pairs ? lo_build(list_no, jj) : ids[jj];
                    heap_replace_top<C>(k, simi, idxi, buf[j], id);
                    nup++;
                }
            }
        }
        return nup;
    }

    size_t scan_codes(
            size_t n,
            const uint8_t* codes,
            const idx_t* ids,
            float* simi,
            idx_t* idxi,
            size_t k) const override {
        if (fast) {
            return l2 ? scan_fast<CMax<float, idx_t>>(n, codes, ids, simi, idxi, k)
                      : scan_fast<CMin<float, idx_t>>(n, codes, ids, simi, idxi, k);
        }
        return l2 ? scan_heap<CMax<float, idx_t>>(n, codes, ids, simi, idxi, k)
                  : scan_heap<CMin<float, idx_t>>(n, codes, ids, simi, idxi, k);
    }

    void scan_codes_range(
            size_t n,
            const uint8_t* codes,
            const idx_t* ids,
            float radius,
            RangeQueryResult& res) const override {
        for (size_t j = 0; j < n; j++, codes += code_size) {
            if (sel && !sel->is_member(id_of(ids, j))) {
                continue;
            }
            float dis = distance_to_code(codes);
            if (l2 ? dis < radius : dis > radius) {
                res.add(dis, store_pairs ? lo_build(list_no, j) : ids[j]);
            }
        }
    }
#endif
};

} // namespace

void IndexIVFTurboQuant::require_centroids(const char* what) const {
    std::vector<float> c(d);
    try {
        quantizer->reconstruct(0, c.data());
    } catch (const FaissException& e) {
        FAISS_THROW_FMT(
                "TurboQuant: %s needs the coarse centroids, and this coarse quantizer "
                "cannot reconstruct them (set by_residual = False, or use a quantizer that "
                "implements reconstruct): %s",
                what,
                e.what());
    }
}

void IndexIVFTurboQuant::check_scannable() const {
    if (!by_residual || !quantizer || quantizer->ntotal == 0) {
        return;
    }
    // the scanner needs the rotated centroids: the residual query Pi (q - c) with L2,
    // the offset <Pi q, Pi c> with inner product
    require_centroids(
            metric_type == METRIC_L2 ? "L2 search with residuals"
                                     : "inner-product search with residuals");
    ensure_rotated_centroids();
}

void IndexIVFTurboQuant::search_preassigned(
        idx_t n,
        const float* x,
        idx_t k,
        const idx_t* assign,
        const float* centroid_dis,
        float* distances,
        idx_t* labels,
        bool store_pairs,
        const IVFSearchParameters* params,
        IndexIVFStats* stats) const {
    check_scannable();
    // FAISS 1.7.3 checks the list numbers inside its OpenMP region, where the exception
    // aborts the process: check them here (a caller's assign array, or a broken quantizer)
    const idx_t np = std::min<idx_t>(idx_t(nlist), params ? params->nprobe : nprobe);
    for (idx_t i = 0; i < n * std::max<idx_t>(np, 0); i++) {
        FAISS_THROW_IF_NOT_FMT(
                assign[i] >= -1 && assign[i] < idx_t(nlist),
                "TurboQuant: invalid list number %lld for query %lld (nlist %zd)",
                (long long)assign[i],
                (long long)(i / np),
                nlist);
    }
    IndexIVF::search_preassigned(
            n, x, k, assign, centroid_dis, distances, labels, store_pairs, params, stats);
}

void IndexIVFTurboQuant::range_search(
        idx_t n,
        const float* x,
        float radius,
        RangeSearchResult* result,
        const SearchParameters* params) const {
    check_scannable();
    IndexIVF::range_search(n, x, radius, result, params);
}

InvertedListScanner* IndexIVFTurboQuant::get_InvertedListScanner(
        bool store_pairs,
        const IDSelector* sel TQ_SCANNER_PARAMS_PARAM) const {
    if (by_residual) {
        // never throws here (FAISS 1.7.3 calls this inside an OpenMP region): searches
        // went through check_scannable; a direct caller gets set_list's error instead
        try {
            ensure_rotated_centroids();
        } catch (const FaissException&) {
        }
    }
    return new IVFTurboQuantScanner(*this, store_pairs, sel);
}

} // namespace faiss
