#include "turboquant_factory.h"

#include <cstdlib>
#include <regex>
#include <string>
#include <typeinfo>
#include <vector>

#include <faiss/IndexFlat.h>
#include <faiss/IndexIDMap.h>
#include <faiss/IndexIVFFlat.h>
#include <faiss/IndexPreTransform.h>
#include <faiss/IndexRefine.h>
#include <faiss/impl/FaissAssert.h>
#include <faiss/index_factory.h>

#include "IndexIVFTurboQuant.h"
#include "IndexTurboQuant.h"

namespace faiss {

namespace {

// split on top-level commas (commas inside parentheses belong to the token)
std::vector<std::string> split_tokens(const std::string& s) {
    std::vector<std::string> out(1);
    int depth = 0;
    for (char c : s) {
        if (c == '(') depth++;
        if (c == ')') depth--;
        if (c == ',' && depth == 0) {
            out.emplace_back();
        } else {
            out.back() += c;
        }
    }
    return out;
}

struct TQSpec {
    int nbits = 0;
    size_t qjl_m = 0;
};

// The slot that holds FAISS's placeholder leaf, following the wrappers' main child.
Index** find_leaf_slot(Index** slot) {
    Index* idx = *slot;
    if (auto* m = dynamic_cast<IndexIDMap*>(idx)) {
        return find_leaf_slot(&m->index);
    }
    if (auto* p = dynamic_cast<IndexPreTransform*>(idx)) {
        return find_leaf_slot(&p->index);
    }
    if (auto* r = dynamic_cast<IndexRefine*>(idx)) {
        return find_leaf_slot(&r->base_index);
    }
    return slot;
}

Index* make_tq_leaf(Index* placeholder, const TQSpec& spec, MetricType metric) {
    if (typeid(*placeholder) == typeid(IndexIVFFlat)) {
        auto* ivf = static_cast<IndexIVFFlat*>(placeholder);
        auto* tq = new IndexIVFTurboQuant(
                ivf->quantizer, ivf->d, ivf->nlist, spec.nbits, spec.qjl_m, metric);
        tq->own_fields = true; // take the coarse quantizer over from the placeholder
        tq->quantizer_trains_alone = ivf->quantizer_trains_alone;
        tq->cp = ivf->cp;
        ivf->own_fields = false;
        return tq;
    }
    FAISS_THROW_IF_NOT_MSG(
            dynamic_cast<IndexFlat*>(placeholder),
            "TurboQuant factory: the TQ token must be the codec of a flat or IVF index");
    return new IndexTurboQuant(placeholder->d, spec.nbits, spec.qjl_m, metric);
}

} // namespace

Index* tq_index_factory(int d, const char* description, MetricType metric) {
    FAISS_THROW_IF_NOT_MSG(description, "index_factory: null description");
    const std::string desc(description);
    static const std::regex tq_re("TQ([0-9]+)(?:q([0-9]+))?");
    std::vector<std::string> tokens = split_tokens(desc);
    int tq_pos = -1;
    TQSpec spec;
    for (size_t i = 0; i < tokens.size(); i++) {
        const std::string& t = tokens[i];
        if (t.compare(0, 2, "TQ") != 0) {
            continue;
        }
        std::smatch m;
        FAISS_THROW_IF_NOT_FMT(
                std::regex_match(t, m, tq_re),
                "index_factory: malformed TurboQuant token '%s' in '%s' (expected TQ<bits> "
                "or TQ<bits>q<qjl_bits>, e.g. TQ4 or TQ3q384)",
                t.c_str(),
                description);
        FAISS_THROW_IF_NOT_FMT(
                tq_pos < 0,
                "index_factory: more than one TurboQuant token in '%s'",
                description);
        FAISS_THROW_IF_NOT_FMT(
                m[1].length() <= 2, "index_factory: bad bit count in '%s'", t.c_str());
        spec.nbits = std::atoi(m[1].str().c_str());
        FAISS_THROW_IF_NOT_FMT(
                spec.nbits >= 1 && spec.nbits <= 8,
                "index_factory: TurboQuant token '%s': bits must be in 1..8",
                t.c_str());
        if (m[2].matched) {
            FAISS_THROW_IF_NOT_FMT(
                    m[2].length() <= 6,
                    "index_factory: TurboQuant token '%s': too many QJL bits",
                    t.c_str());
            spec.qjl_m = std::strtoul(m[2].str().c_str(), nullptr, 10);
            FAISS_THROW_IF_NOT_FMT(
                    spec.qjl_m >= 1,
                    "index_factory: TurboQuant token '%s': QJL bits must be >= 1",
                    t.c_str());
        }
        tq_pos = int(i);
    }
    if (tq_pos < 0) {
        return index_factory(d, description, metric);
    }
    FAISS_THROW_IF_NOT_FMT(d >= 1, "index_factory: dimension %d must be >= 1", d);
    // Let FAISS build the composition with a placeholder codec, then swap ours in.
    tokens[tq_pos] = "Flat";
    std::string placeholder_desc;
    for (size_t i = 0; i < tokens.size(); i++) {
        placeholder_desc += (i ? "," : "") + tokens[i];
    }
    Index* root = index_factory(d, placeholder_desc.c_str(), metric);
    try {
        Index** slot = find_leaf_slot(&root);
        Index* leaf = *slot;
        Index* tq = make_tq_leaf(leaf, spec, metric);
        *slot = tq;
        // Factory-built wrappers own their children. Training state is unchanged:
        // a flat placeholder and IndexTurboQuant are both trained, an IVF placeholder
        // and IndexIVFTurboQuant both need their coarse quantizer trained.
        delete leaf;
    } catch (...) {
        delete root;
        throw;
    }
    return root;
}

} // namespace faiss
