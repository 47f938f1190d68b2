#include "IndexTurboQuant.h"

#include <memory>

#include <faiss/impl/AuxIndexStructures.h>
#include <faiss/impl/FaissAssert.h>
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
    const uint8_t* code = index.codes.data();
    for (idx_t i = 0; i < index.ntotal; i++, code += index.code_size) {
        if (sel && !sel->is_member(i)) {
            continue;
        }
        float v = index.tq.estimate_distance(query, code, l2);
        if (C::cmp(dis[0], v)) {
            heap_replace_top<C>(k, dis, ids, v, i);
        }
    }
    heap_reorder<C>(k, dis, ids);
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

void IndexTurboQuant::sa_encode(idx_t n, const float* x, uint8_t* bytes) const {
    tq.encode(n, x, bytes);
}

void IndexTurboQuant::sa_decode(idx_t n, const uint8_t* bytes, float* x) const {
    tq.decode(n, bytes, x);
}

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
#pragma omp parallel for if (n > 1)
    for (idx_t q = 0; q < n; q++) {
        TurboQuantizer::Query query;
        tq.prepare_query(x + q * d, query);
        if (metric_type == METRIC_L2) {
            search_one<CMax<float, idx_t>>(
                    *this, query, k, distances + q * k, labels + q * k, sel);
        } else {
            search_one<CMin<float, idx_t>>(
                    *this, query, k, distances + q * k, labels + q * k, sel);
        }
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
