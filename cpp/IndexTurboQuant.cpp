#include "IndexTurboQuant.h"

#include <memory>

#include <omp.h>

#include <faiss/impl/AuxIndexStructures.h>
#include <faiss/impl/FaissAssert.h>

#include "blas.h"
#include "scan/code_dot.h"
#include "scan/fast_scan_i8.h"
#include <faiss/impl/IDSelector.h>
#include <faiss/utils/Heap.h>


namespace faiss {

namespace {

struct TQDistanceComputer : FlatCodesDistanceComputer {
    const IndexTurboQuant& index;
    TurboQuantizer::Query query;
    bool l2;
    std::vector<float> tmp;

    explicit TQDistanceComputer(const IndexTurboQuant& index)
            : FlatCodesDistanceComputer(index.codes.data(), index.code_size),
              index(index),
              l2(index.metric_type == METRIC_L2),
              tmp(2 * index.d) {}

    void set_query(const float* x) override {
        index.tq.prepare_query(x, query);
    }

    float distance_to_code(const uint8_t* code) override {
        return index.tq.estimate_distance(query, code, l2);
    }

    // distance between two stored vectors: decode one, use it as the query
    float symmetric_dis(idx_t i, idx_t j) override {
        index.tq.decode(1, codes + i * code_size, tmp.data());
        TurboQuantizer::Query q;
        index.tq.prepare_query(tmp.data(), q);
        return index.tq.estimate_distance(q, codes + j * code_size, l2);
    }
};

// top-k scan of all codes for one query; C is CMin (inner product) or CMax (L2)
template <class C>
void search_one(
        const IndexTurboQuant& index,
        const TurboQuantizer::Query& query,
        idx_t k,
        float* dis,
        idx_t* ids,
        const IDSelector* sel) {
    const bool l2 = index.metric_type == METRIC_L2;
    heap_heapify<C>(k, dis, ids);
    const uint8_t* codes = index.codes.data();
    if (sel) { // only the selected codes are scored
        for (idx_t i = 0; i < index.ntotal; i++) {
            if (sel->is_member(i)) {
                float v = index.tq.estimate_distance(query, codes + i * index.code_size, l2);
                if (C::cmp(dis[0], v)) {
                    heap_replace_top<C>(k, dis, ids, v, i);
                }
            }
        }
    } else {
        const size_t bs = 256;
        float buf[bs];
        for (idx_t i0 = 0; i0 < index.ntotal; i0 += bs) {
            size_t nb = std::min<size_t>(bs, index.ntotal - i0);
            index.tq.estimate_distances(query, codes + i0 * index.code_size, nb, l2, buf);
            for (size_t j = 0; j < nb; j++) {
                if (C::cmp(dis[0], buf[j])) {
                    heap_replace_top<C>(k, dis, ids, buf[j], i0 + j);
                }
            }
        }
    }
    heap_reorder<C>(k, dis, ids);
}

bool fast_scan_eligible(const IndexTurboQuant& index, const IDSelector* sel) {
    return index.use_fast_scan && !sel && index.tq.qjl_m == 0 &&
            tq_kernels::fast_scan_i8_usable(index.tq.nbits);
}

/// the k best of the k2 candidates by the float kernel (the distances returned)
template <class C>
void rescore_candidates(
        const IndexTurboQuant& index,
        const TurboQuantizer::Query& query,
        idx_t k2,
        const idx_t* cids,
        idx_t k,
        float* dis,
        idx_t* ids) {
    const bool l2 = index.metric_type == METRIC_L2;
    // the candidates are scattered over the codes: request all their lines first, so the
    // misses overlap instead of costing one memory latency each
    for (idx_t c = 0; c < k2; c++) {
        if (cids[c] >= 0) {
            const uint8_t* code = index.codes.data() + cids[c] * index.code_size;
            for (size_t b = 0; b < index.code_size; b += 64) {
                __builtin_prefetch(code + b, 0, 3);
            }
            __builtin_prefetch(code + index.code_size - 1, 0, 3);
        }
    }
    heap_heapify<C>(k, dis, ids);
    for (idx_t c = 0; c < k2; c++) {
        if (cids[c] < 0) {
            continue;
        }
        float v = index.tq.estimate_distance(
                query, index.codes.data() + cids[c] * index.code_size, l2);
        if (C::cmp(dis[0], v)) {
            heap_replace_top<C>(k, dis, ids, v, cids[c]);
        }
    }
    heap_reorder<C>(k, dis, ids);
}


/* Integer fast scan (see use_fast_scan), one query: approximate distances of all codes
 * by blocks, candidates against the heap top at the block start, kept in a heap of
 * tq_kernels::fast_scan_candidates(k), then re-scored. */
template <class C>
void search_fast_one(
        const IndexTurboQuant& index,
        const TurboQuantizer::Query& query,
        idx_t k,
        float* dis,
        idx_t* ids) {
    const bool l2 = index.metric_type == METRIC_L2;
    const TurboQuantizer& tq = index.tq;
    const idx_t k2 = tq_kernels::fast_scan_candidates(k);
    const size_t bs = 1024;
    tq_kernels::QueryI8 q8;
    tq_kernels::prepare_query_i8(
            query.qrot.data(), tq.centroid_table.data(), index.d, tq.nbits, query.qnorm2, q8);
    std::vector<float> cdis(k2), cand_dis(bs + 16);
    std::vector<idx_t> cids(k2);
    std::vector<uint32_t> cand_pos(bs + 16);
    heap_heapify<C>(k2, cdis.data(), cids.data());
    // the first block is small: until the heap is full every code is a candidate
    for (idx_t i0 = 0, nb0 = 64; i0 < index.ntotal; i0 += nb0, nb0 = bs) {
        const size_t nb = std::min<size_t>(nb0, index.ntotal - i0);
        const size_t nc = tq_kernels::scan_i8(
                index.codes.data() + i0 * index.code_size, index.code_size, nb,
                tq.factors_offset(), q8, l2, cdis[0], cand_dis.data(), cand_pos.data());
        for (size_t c = 0; c < nc; c++) {
            if (C::cmp(cdis[0], cand_dis[c])) {
                heap_replace_top<C>(k2, cdis.data(), cids.data(), cand_dis[c], i0 + cand_pos[c]);
            }
        }
    }
    rescore_candidates<C>(index, query, k2, cids.data(), k, dis, ids);
}

/* Integer fast scan for many queries: an integer matrix product. Queries are packed in
 * panels of 16; each thread task takes up to 256 queries, unpacks blocks of 32 codes to
 * 8-bit centroids once for all of them (decode_i8) and multiplies the block into the
 * panels (scan_panels_i8). The candidates and the estimator are those of search_fast_one, so a
 * query gets the same results alone or in a batch. */
template <class C>
void search_fast_batch(
        const IndexTurboQuant& index,
        idx_t n,
        const float* x,
        idx_t k,
        float* distances,
        idx_t* labels) {
    const bool l2 = index.metric_type == METRIC_L2;
    const TurboQuantizer& tq = index.tq;
    const idx_t k2 = tq_kernels::fast_scan_candidates(k);
    std::vector<TurboQuantizer::Query> queries(n);
    std::vector<tq_kernels::QueryI8> q8(n);
    std::vector<const tq_kernels::QueryI8*> qp(n);
#pragma omp parallel for
    for (idx_t q = 0; q < n; q++) {
        tq.prepare_query(x + q * index.d, queries[q]);
        tq_kernels::prepare_query_i8(
                queries[q].qrot.data(), tq.centroid_table.data(), index.d, tq.nbits,
                queries[q].qnorm2, q8[q]);
        qp[q] = &q8[q];
    }
    tq_kernels::PanelsI8 panels;
    tq_kernels::pack_panels_i8(qp.data(), n, panels);
    const size_t L = panels.row_length, nb_max = 32;
    // queries per thread task: the decode of a block is shared by all of them
    const idx_t chunk = std::max<idx_t>(
            16, std::min<idx_t>(512, (n / omp_get_max_threads() + 15) / 16 * 16));
    const idx_t nchunks = (n + chunk - 1) / chunk;
    std::vector<float> cdis(n * k2);
    std::vector<idx_t> cids(n * k2);
#pragma omp parallel
    {
        std::vector<uint8_t> rows(nb_max * L);
        std::vector<float> ipf(nb_max), norm(nb_max), thr(panels.npanels * 16);
        std::vector<tq_kernels::CandidateI8> cands(nb_max * chunk);
#pragma omp for schedule(dynamic)
        for (idx_t c = 0; c < nchunks; c++) {
            const idx_t q0 = c * chunk, q1 = std::min<idx_t>(n, q0 + chunk);
            for (idx_t q = q0; q < q1; q++) {
                heap_heapify<C>(k2, cdis.data() + q * k2, cids.data() + q * k2);
                thr[q] = cdis[q * k2];
            }
            const size_t panel0 = q0 / 16, npan = (q1 - q0 + 15) / 16;
            for (idx_t i0 = 0; i0 < index.ntotal; i0 += nb_max) {
                const size_t nb = std::min<size_t>(nb_max, index.ntotal - i0);
                const uint8_t* block = index.codes.data() + i0 * index.code_size;
                // the next block, into L2 while this one is multiplied: a block takes tens
                // of microseconds, too long for the hardware prefetchers' stream to stay ahead
                const idx_t next = i0 + idx_t(nb);
                const size_t next_bytes = next < index.ntotal
                        ? std::min<size_t>(nb_max, index.ntotal - next) * index.code_size
                        : 0;
                for (size_t b = 0; b < next_bytes; b += 64) {
                    __builtin_prefetch(block + nb * index.code_size + b, 0, 2);
                }
                tq_kernels::decode_i8(block, index.code_size, nb, q8[0], rows.data());
                tq_kernels::load_factors(
                        block, index.code_size, nb, tq.factors_offset(), ipf.data(),
                        norm.data());
                const size_t nc = tq_kernels::scan_panels_i8(
                        rows.data(), ipf.data(), norm.data(), nb, panels, panel0, npan, l2,
                        thr.data(), cands.data());
                for (size_t j = 0; j < nc; j++) {
                    const tq_kernels::CandidateI8& cd = cands[j];
                    float* hd = cdis.data() + cd.query * k2;
                    if (C::cmp(hd[0], cd.dis)) {
                        heap_replace_top<C>(
                                k2, hd, cids.data() + cd.query * k2, cd.dis, i0 + cd.pos);
                        thr[cd.query] = hd[0];
                    }
                }
            }
        }
    }
#pragma omp parallel for
    for (idx_t q = 0; q < n; q++) {
        rescore_candidates<C>(
                index, queries[q], k2, cids.data() + q * k2, k, distances + q * k,
                labels + q * k);
    }
}

/* Many queries at once: decode a block of database codes to their (unscaled) centroid
 * vectors once, score all queries against it with one BLAS matrix product in the
 * rotated space, then apply the per-vector factors and update the heaps. */
template <class C>
void search_batch_blas(
        const IndexTurboQuant& index,
        idx_t n,
        const float* x,
        idx_t k,
        float* distances,
        idx_t* labels,
        const IDSelector* sel) {
    const TurboQuantizer& tq = index.tq;
    const size_t d = index.d;
    const bool l2 = index.metric_type == METRIC_L2;
    const size_t bs = 4096;
    const float* cen = tq.codebook.centroids.data();
    std::vector<TurboQuantizer::Query> queries(n);
    std::vector<float> qrot(size_t(n) * d);
#pragma omp parallel for
    for (idx_t q = 0; q < n; q++) {
        tq.prepare_query(x + q * d, queries[q]);
        std::copy(queries[q].qrot.begin(), queries[q].qrot.end(), qrot.begin() + q * d);
        heap_heapify<C>(k, distances + q * k, labels + q * k);
    }
    std::vector<float> dec(bs * d), scores(bs * size_t(n));
    for (idx_t j0 = 0; j0 < index.ntotal; j0 += bs) {
        const size_t nb = std::min<size_t>(bs, index.ntotal - j0);
        const uint8_t* codes = index.codes.data() + j0 * index.code_size;
#pragma omp parallel
        {
            std::vector<uint8_t> c(d);
#pragma omp for
            for (int64_t v = 0; v < int64_t(nb); v++) {
                tq.unpack_codes(codes + v * index.code_size, c.data());
                float* row = dec.data() + v * d;
                for (size_t i = 0; i < d; i++) {
                    row[i] = cen[c[i]];
                }
            }
        }
        {
            // scores (n x nb, row-major) = qrot (n x d) * dec^T
            int nbi = int(nb), ni = int(n), di = int(d);
            float one = 1, zero = 0;
            sgemm_("T", "N", &nbi, &ni, &di, &one, dec.data(), &di, qrot.data(), &di,
                   &zero, scores.data(), &nbi);
        }
#pragma omp parallel for
        for (idx_t q = 0; q < n; q++) {
            float* dis = distances + q * k;
            idx_t* ids = labels + q * k;
            float* sq = scores.data() + q * nb;
            tq.finish_distances(queries[q], codes, nb, l2, sq); // dots -> distances
            for (size_t v = 0; v < nb; v++) {
                const idx_t id = j0 + v;
                if (sel && !sel->is_member(id)) {
                    continue;
                }
                if (C::cmp(dis[0], sq[v])) {
                    heap_replace_top<C>(k, dis, ids, sq[v], id);
                }
            }
        }
    }
#pragma omp parallel for
    for (idx_t q = 0; q < n; q++) {
        heap_reorder<C>(k, distances + q * k, labels + q * k);
    }
}

void check_metric(MetricType metric) {
    FAISS_THROW_IF_NOT_MSG(
            metric == METRIC_L2 || metric == METRIC_INNER_PRODUCT,
            "TurboQuant: only METRIC_L2 and METRIC_INNER_PRODUCT are supported");
}

} // namespace

bool tq_same_codec(const TurboQuantizer& a, const TurboQuantizer& b) {
    return a.d == b.d && a.nbits == b.nbits && a.qjl_m == b.qjl_m && a.seed == b.seed &&
            a.rotation_kind == b.rotation_kind &&
            a.rotation_rounds == b.rotation_rounds && a.correction == b.correction;
}

IndexTurboQuant::IndexTurboQuant() {
    is_trained = true;
}

IndexTurboQuant::IndexTurboQuant(
        idx_t d,
        int nbits,
        size_t qjl_m,
        MetricType metric,
        uint64_t seed)
        : IndexFlatCodes(0, d, metric) {
    check_metric(metric);
    FAISS_THROW_IF_NOT_MSG(d >= 1, "TurboQuant: dimension must be >= 1");
    tq.d = d;
    tq.nbits = nbits;
    tq.qjl_m = qjl_m;
    tq.seed = seed;
    reinit();
}

void IndexTurboQuant::reinit() {
    check_metric(metric_type);
    FAISS_THROW_IF_NOT_MSG(
            tq.d == size_t(d), "TurboQuant: codec dimension differs from index");
    tq.init();
    code_size = tq.code_size;
    is_trained = true;
    reset();
}

void IndexTurboQuant::train(idx_t, const float*) {
    // TurboQuant is data-oblivious: nothing to learn.
    is_trained = true;
}

void IndexTurboQuant::add(idx_t n, const float* x) {
    tq.check_finite(n, x, "input");
    IndexFlatCodes::add(n, x);
}

void IndexTurboQuant::sa_encode(idx_t n, const float* x, uint8_t* bytes) const {
    tq.encode(n, x, bytes);
}

void IndexTurboQuant::sa_decode(idx_t n, const uint8_t* bytes, float* x) const {
    tq.decode(n, bytes, x);
}

namespace {

/// the three search strategies, for one comparator (CMin: inner product, CMax: L2)
template <class C>
void search_impl(
        const IndexTurboQuant& index,
        idx_t n,
        const float* x,
        idx_t k,
        float* distances,
        idx_t* labels,
        const IDSelector* sel) {
    const TurboQuantizer& tq = index.tq;
    const size_t d = index.d;
    const bool fast = fast_scan_eligible(index, sel);
    const bool fast_batch = tq_kernels::fast_scan_i8_simd() || tq_kernels::simd_level() == 0;
    if (fast && fast_batch && n >= 16) { // integer matrix product
        search_fast_batch<C>(index, n, x, k, distances, labels);
    } else if (fast) { // integer scan, one query per thread
#pragma omp parallel for if (n > 1)
        for (idx_t q = 0; q < n; q++) {
            TurboQuantizer::Query query;
            tq.prepare_query(x + q * d, query);
            search_fast_one<C>(index, query, k, distances + q * k, labels + q * k);
        }
    } else if (n >= index.batch_search_threshold) { // decode blocks once, BLAS product
        search_batch_blas<C>(index, n, x, k, distances, labels, sel);
    } else { // float kernel, one query per thread
#pragma omp parallel for if (n > 1)
        for (idx_t q = 0; q < n; q++) {
            TurboQuantizer::Query query;
            tq.prepare_query(x + q * d, query);
            search_one<C>(index, query, k, distances + q * k, labels + q * k, sel);
        }
    }
}

} // namespace

void IndexTurboQuant::search(
        idx_t n,
        const float* x,
        idx_t k,
        float* distances,
        idx_t* labels,
        const SearchParameters* params) const {
    FAISS_THROW_IF_NOT_MSG(k > 0, "TurboQuant: k must be > 0");
    tq.check_finite(n, x, "query");
    const IDSelector* sel = params ? params->sel : nullptr;
    if (metric_type == METRIC_L2) {
        search_impl<CMax<float, idx_t>>(*this, n, x, k, distances, labels, sel);
    } else {
        search_impl<CMin<float, idx_t>>(*this, n, x, k, distances, labels, sel);
    }
}

void IndexTurboQuant::range_search(
        idx_t n,
        const float* x,
        float radius,
        RangeSearchResult* result,
        const SearchParameters* params) const {
    tq.check_finite(n, x, "query");
    const IDSelector* sel = params ? params->sel : nullptr;
    const bool l2 = metric_type == METRIC_L2;
#pragma omp parallel
    {
        RangeSearchPartialResult pres(result);
        TurboQuantizer::Query query;
#pragma omp for
        for (idx_t q = 0; q < n; q++) {
            tq.prepare_query(x + q * d, query);
            RangeQueryResult& qres = pres.new_result(q);
            const uint8_t* code = codes.data();
            for (idx_t i = 0; i < ntotal; i++, code += code_size) {
                if (sel && !sel->is_member(i)) {
                    continue;
                }
                float v = tq.estimate_distance(query, code, l2);
                if (l2 ? v < radius : v > radius) {
                    qres.add(v, i);
                }
            }
        }
        pres.finalize();
    }
}

FlatCodesDistanceComputer* IndexTurboQuant::get_FlatCodesDistanceComputer() const {
    return new TQDistanceComputer(*this);
}

void IndexTurboQuant::check_compatible_for_merge(const Index& otherIndex) const {
    const IndexTurboQuant* other = dynamic_cast<const IndexTurboQuant*>(&otherIndex);
    FAISS_THROW_IF_NOT_MSG(other, "TurboQuant: can only merge another IndexTurboQuant");
    FAISS_THROW_IF_NOT_MSG(
            other->d == d && other->metric_type == metric_type &&
                    tq_same_codec(tq, other->tq),
            "TurboQuant: indexes to merge must have the same dimension, metric and "
            "codec parameters (bits, QJL bits, seed, rotation)");
}

} // namespace faiss
