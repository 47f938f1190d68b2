#include "turboquant_io.h"

#include <unistd.h>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <typeinfo>
#include <string>
#include <vector>

#include <faiss/IndexFlat.h>
#include <faiss/IndexFlatCodes.h>
#include <faiss/IndexHNSW.h>
#include <faiss/IndexIVFFlat.h>
#include <faiss/IndexIDMap.h>
#include <faiss/IndexPreTransform.h>
#include <faiss/IndexRefine.h>
#include <faiss/IndexScalarQuantizer.h>
#include <faiss/VectorTransform.h>
#include <faiss/impl/FaissAssert.h>
#include <faiss/clone_index.h>
#include <faiss/index_io.h>
#include <faiss/invlists/InvertedLists.h>

#include "IndexIVFTurboQuant.h"
#include "IndexTurboQuant.h"

namespace faiss {

namespace {

// ---- format constants -------------------------------------------------------
// version 2 added the codec's scale_search (version 1 files were encoded without the
// search: they read back with scale_search = 1, so appended vectors match the old ones)
const uint32_t kFormatVersion = 2;
const uint32_t kOldestFormatVersion = 1;
const char* const kFlat = "TQFl";
const char* const kIVF = "TQIv";
const char* const kIDMap = "TQMp";
const char* const kIDMap2 = "TQM2";
const char* const kPreTransform = "TQPt";
const char* const kRefine = "TQRf";
const char* const kInvLists = "TQil";
const char* const kFlatFloat = "TQff"; // a plain IndexFlat inside one of our trees
const char* const kLinear = "TQvt";    // a linear transform inside one of our trees

// sanity limits applied before anything is allocated
const int64_t kMaxDim = 1 << 16;
const int64_t kMaxNtotal = int64_t(1) << 40;
const uint64_t kMaxNlist = uint64_t(1) << 28;
const uint64_t kMaxChain = 64;
const size_t kChunk = size_t(1) << 22; // bytes read per step: a truncated file fails early

uint32_t fcc(const char* s) {
    return fourcc(s);
}

// ---- writing ----------------------------------------------------------------
template <class T>
void put(IOWriter* f, const T& v) {
    FAISS_THROW_IF_NOT_MSG((*f)(&v, sizeof(T), 1) == 1, "TurboQuant: write error");
}

void put_bytes(IOWriter* f, const void* p, size_t n) {
    if (n > 0) {
        FAISS_THROW_IF_NOT_MSG((*f)(p, 1, n) == n, "TurboQuant: write error");
    }
}

void put_header(IOWriter* f, const char* tag, const Index* idx) {
    put(f, fcc(tag));
    put(f, kFormatVersion);
    put(f, int32_t(idx->d));
    put(f, int64_t(idx->ntotal));
    put(f, uint8_t(idx->is_trained));
    put(f, int32_t(idx->metric_type));
    put(f, float(idx->metric_arg));
}

void put_codec(IOWriter* f, const TurboQuantizer& tq) {
    put(f, uint64_t(tq.d));
    put(f, int32_t(tq.nbits));
    put(f, uint64_t(tq.qjl_m));
    put(f, uint64_t(tq.seed));
    put(f, int32_t(tq.rotation_kind));
    put(f, int32_t(tq.rotation_rounds));
    put(f, int32_t(tq.correction));
    put(f, int32_t(tq.scale_search));
}

void put_floats(IOWriter* f, const std::vector<float>& v) {
    put(f, uint64_t(v.size()));
    put_bytes(f, v.data(), v.size() * sizeof(float));
}

/* Linear transforms (RR, PCA, OPQ and plain LinearTransform) inside our trees are written
 * in our own validated block; OPQ comes back as a LinearTransform (as FAISS 1.7.3's own
 * reader does). Other transforms go to FAISS's writer. */
enum LinearKind : uint8_t { kLinearPlain = 0, kLinearRR = 1, kLinearPCA = 2 };

void write_transform(IOWriter* f, const VectorTransform* vt) {
    auto* lt = dynamic_cast<const LinearTransform*>(vt);
    const std::type_info& t = typeid(*vt);
    if (!lt ||
        !(t == typeid(LinearTransform) || t == typeid(RandomRotationMatrix) ||
          t == typeid(PCAMatrix) || t == typeid(OPQMatrix))) {
        write_VectorTransform(vt, f);
        return;
    }
    auto* pca = dynamic_cast<const PCAMatrix*>(vt);
    put(f, fcc(kLinear));
    put(f, kFormatVersion);
    put(f, uint8_t(pca                                       ? kLinearPCA
                           : t == typeid(RandomRotationMatrix) ? kLinearRR
                                                              : kLinearPlain));
    put(f, int32_t(lt->d_in));
    put(f, int32_t(lt->d_out));
    put(f, uint8_t(lt->is_trained));
    put(f, uint8_t(lt->have_bias));
    put(f, uint8_t(lt->is_orthonormal));
    put_floats(f, lt->A);
    put_floats(f, lt->b);
    if (pca) {
        put(f, float(pca->eigen_power));
        put(f, float(pca->epsilon));
        put(f, uint8_t(pca->random_rotation));
        put(f, uint64_t(pca->max_points_per_d));
        put(f, int32_t(pca->balanced_bins));
        put_floats(f, pca->mean);
        put_floats(f, pca->eigenvalues);
        put_floats(f, pca->PCAMat);
    }
}

void put_ids(IOWriter* f, const std::vector<idx_t>& ids) {
    put(f, uint64_t(ids.size()));
    put_bytes(f, ids.data(), ids.size() * sizeof(idx_t));
}

void write_invlists(IOWriter* f, const InvertedLists* il) {
    FAISS_THROW_IF_NOT_MSG(
            dynamic_cast<const ArrayInvertedLists*>(il),
            "TurboQuant: only in-memory (Array) inverted lists can be written");
    put(f, fcc(kInvLists));
    put(f, uint64_t(il->nlist));
    put(f, uint64_t(il->code_size));
    for (size_t l = 0; l < il->nlist; l++) {
        size_t n = il->list_size(l);
        put(f, uint64_t(n));
        InvertedLists::ScopedIds ids(il, l);
        InvertedLists::ScopedCodes codes(il, l);
        put_bytes(f, ids.get(), n * sizeof(idx_t));
        put_bytes(f, codes.get(), n * il->code_size);
    }
}

// ---- reading ----------------------------------------------------------------
template <class T>
T get(IOReader* f) {
    T v;
    FAISS_THROW_IF_NOT_MSG(
            (*f)(&v, sizeof(T), 1) == 1, "TurboQuant: file is truncated");
    return v;
}

/// read n bytes into v, growing it chunk by chunk so that a size field larger than
/// the file cannot cause a large allocation
void get_bytes(IOReader* f, std::vector<uint8_t>& v, size_t n) {
    v.clear();
    size_t done = 0;
    while (done < n) {
        size_t step = std::min(kChunk, n - done);
        v.resize(done + step);
        FAISS_THROW_IF_NOT_MSG(
                (*f)(v.data() + done, 1, step) == step, "TurboQuant: file is truncated");
        done += step;
    }
}

/// n elements of T (n already checked), read in chunks through get_bytes
template <class T>
void get_elements(IOReader* f, std::vector<T>& v, uint64_t n) {
    std::vector<uint8_t> raw;
    get_bytes(f, raw, n * sizeof(T));
    v.resize(n);
    if (n) {
        std::memcpy(v.data(), raw.data(), n * sizeof(T));
    }
}

void get_ids(IOReader* f, std::vector<idx_t>& ids, uint64_t expected) {
    uint64_t n = get<uint64_t>(f);
    FAISS_THROW_IF_NOT_FMT(
            n == expected,
            "TurboQuant: corrupt file: %llu ids for %llu vectors",
            (unsigned long long)n,
            (unsigned long long)expected);
    get_elements(f, ids, n);
}

struct Header {
    uint32_t version;
    int32_t d;
    int64_t ntotal;
    bool is_trained;
    int32_t metric;
    float metric_arg;
};

Header get_header(IOReader* f, bool own_metric) {
    uint32_t version = get<uint32_t>(f);
    FAISS_THROW_IF_NOT_FMT(
            version >= kOldestFormatVersion && version <= kFormatVersion,
            "TurboQuant: unsupported format version %u (this build reads %u to %u)",
            version,
            kOldestFormatVersion,
            kFormatVersion);
    Header h;
    h.version = version;
    h.d = get<int32_t>(f);
    h.ntotal = get<int64_t>(f);
    uint8_t trained = get<uint8_t>(f);
    h.metric = get<int32_t>(f);
    h.metric_arg = get<float>(f);
    FAISS_THROW_IF_NOT_FMT(
            h.d >= 1 && h.d <= kMaxDim, "TurboQuant: corrupt file: dimension %d", h.d);
    FAISS_THROW_IF_NOT_FMT(
            h.ntotal >= 0 && h.ntotal <= kMaxNtotal,
            "TurboQuant: corrupt file: ntotal %lld",
            (long long)h.ntotal);
    FAISS_THROW_IF_NOT_MSG(trained <= 1, "TurboQuant: corrupt file: is_trained flag");
    if (own_metric) {
        FAISS_THROW_IF_NOT_FMT(
                h.metric == METRIC_L2 || h.metric == METRIC_INNER_PRODUCT,
                "TurboQuant: corrupt file: metric %d",
                h.metric);
    }
    h.is_trained = trained;
    return h;
}

void apply_header(Index* idx, const Header& h) {
    idx->d = h.d;
    idx->ntotal = h.ntotal;
    idx->is_trained = h.is_trained;
    idx->metric_type = MetricType(h.metric);
    idx->metric_arg = h.metric_arg;
}

/// Memory the codecs of one file may derive (rotation tables are computed, not read, so
/// a few bytes of parameters could otherwise ask for a lot). Reset per tq_read_index call.
thread_local size_t codec_budget = 0;
const size_t kCodecBudget = size_t(256) << 20;

void get_codec(IOReader* f, TurboQuantizer& tq, const Header& h) {
    const int32_t d = h.d;
    uint64_t cd = get<uint64_t>(f);
    FAISS_THROW_IF_NOT_MSG(cd == uint64_t(d), "TurboQuant: corrupt file: codec dimension");
    tq.d = cd;
    tq.nbits = get<int32_t>(f);
    tq.qjl_m = get<uint64_t>(f);
    tq.seed = get<uint64_t>(f);
    tq.rotation_kind = get<int32_t>(f);
    tq.rotation_rounds = get<int32_t>(f);
    tq.correction = get<int32_t>(f);
    tq.scale_search = h.version >= 2 ? get<int32_t>(f) : 1; // init() validates it
    FAISS_THROW_IF_NOT_MSG(
            tq.qjl_m <= 8 * tq.d, "TurboQuant: corrupt file: QJL bit count");
    FAISS_THROW_IF_NOT_MSG(
            tq.rotation_kind != TQRotation::DENSE || tq.d <= 1024,
            "TurboQuant: corrupt file: dense rotation dimension");
    FAISS_THROW_IF_NOT_MSG(
            tq.rotation_rounds >= 1 && tq.rotation_rounds <= 16,
            "TurboQuant: corrupt file: rotation rounds");
    size_t nrot = 1 + (tq.qjl_m + tq.d - 1) / tq.d;
    size_t need = nrot * size_t(tq.rotation_rounds) * tq.d * 8 +
            (tq.rotation_kind == TQRotation::DENSE ? tq.d * tq.d * 4 : 0);
    FAISS_THROW_IF_NOT_MSG(
            need <= codec_budget,
            "TurboQuant: corrupt file: codec parameters exceed the reader's memory budget");
    codec_budget -= need;
    tq.init(); // validates the remaining parameters
}

/// Gives back the 4 bytes of an already-read fourcc before the rest of the stream,
/// so a tag that is not ours can be handed to faiss::read_index.
struct PushbackReader : IOReader {
    IOReader* base;
    uint8_t head[4];
    size_t pos = 0;

    PushbackReader(IOReader* base, uint32_t tag) : base(base) {
        std::memcpy(head, &tag, 4);
    }

    size_t operator()(void* ptr, size_t size, size_t nitems) override {
        size_t want = size * nitems, got = 0;
        uint8_t* out = static_cast<uint8_t*>(ptr);
        while (pos < 4 && got < want) {
            out[got++] = head[pos++];
        }
        if (got < want) {
            got += (*base)(out + got, 1, want - got);
        }
        return size ? got / size : 0;
    }
};

Index* read_any(IOReader* f, int io_flags, int depth);

Index* read_flat(IOReader* f) {
    Header h = get_header(f, true);
    std::unique_ptr<IndexTurboQuant> idx(new IndexTurboQuant());
    apply_header(idx.get(), h);
    get_codec(f, idx->tq, h);
    idx->code_size = idx->tq.code_size;
    uint64_t cs = get<uint64_t>(f);
    FAISS_THROW_IF_NOT_MSG(cs == idx->code_size, "TurboQuant: corrupt file: code size");
    get_bytes(f, idx->codes, size_t(h.ntotal) * cs);
    idx->ntotal = h.ntotal;
    idx->is_trained = true;
    return idx.release();
}

InvertedLists* read_invlists(IOReader* f, size_t nlist, size_t code_size, int64_t ntotal) {
    FAISS_THROW_IF_NOT_MSG(
            get<uint32_t>(f) == fcc(kInvLists), "TurboQuant: corrupt file: inverted lists");
    FAISS_THROW_IF_NOT_MSG(
            get<uint64_t>(f) == nlist && get<uint64_t>(f) == code_size,
            "TurboQuant: corrupt file: inverted lists shape");
    std::unique_ptr<ArrayInvertedLists> il(new ArrayInvertedLists(nlist, code_size));
    uint64_t total = 0;
    std::vector<uint8_t> ids, codes;
    for (size_t l = 0; l < nlist; l++) {
        uint64_t n = get<uint64_t>(f);
        FAISS_THROW_IF_NOT_MSG(
                n <= uint64_t(ntotal) - total,
                "TurboQuant: corrupt file: inverted list sizes exceed ntotal");
        total += n;
        get_bytes(f, ids, n * sizeof(idx_t));
        get_bytes(f, codes, n * code_size);
        if (n) {
            il->add_entries(l, n, reinterpret_cast<const idx_t*>(ids.data()), codes.data());
        }
    }
    FAISS_THROW_IF_NOT_MSG(
            total == uint64_t(ntotal),
            "TurboQuant: corrupt file: inverted list sizes do not add up to ntotal");
    return il.release();
}

/* The coarse quantizer of an IVF index (our layout or FAISS's). It must return list
 * numbers (positions), so only index types whose labels are positions are accepted; a
 * trained one holds exactly nlist centroids (which bounds nlist by the bytes in the file),
 * an untrained one none. */
Index* read_quantizer(IOReader* f, int io_flags, int depth, const Header& h, uint64_t nlist) {
    std::unique_ptr<Index> quantizer(read_any(f, io_flags, depth + 1));
    FAISS_THROW_IF_NOT_MSG(
            quantizer->d == h.d, "TurboQuant: corrupt file: quantizer dimension");
    FAISS_THROW_IF_NOT_MSG(
            dynamic_cast<IndexFlatCodes*>(quantizer.get()) ||
                    dynamic_cast<IndexHNSW*>(quantizer.get()),
            "TurboQuant: corrupt file: unsupported coarse quantizer type");
    if (h.is_trained) {
        FAISS_THROW_IF_NOT_MSG(
                quantizer->ntotal == idx_t(nlist),
                "TurboQuant: corrupt file: quantizer size differs from nlist");
    } else {
        FAISS_THROW_IF_NOT_MSG(
                quantizer->ntotal == 0 && h.ntotal == 0 && nlist <= (1 << 20),
                "TurboQuant: corrupt file: untrained IVF index with content");
    }
    return quantizer.release();
}

/// every direct-map entry must point inside the lists (reconstruct reads there)
void check_direct_map(const IndexIVF* idx) {
    auto inside = [idx](idx_t lo) {
        return lo_listno(lo) < idx->nlist &&
                lo_offset(lo) < idx->invlists->list_size(lo_listno(lo));
    };
    for (idx_t lo : idx->direct_map.array) {
        FAISS_THROW_IF_NOT_MSG(
                lo == -1 || inside(lo), "TurboQuant: corrupt file: direct map entry out of range");
    }
    for (auto& kv : idx->direct_map.hashtable) {
        FAISS_THROW_IF_NOT_MSG(
                inside(kv.second), "TurboQuant: corrupt file: direct map entry out of range");
    }
}

Index* read_ivf(IOReader* f, int io_flags, int depth) {
    Header h = get_header(f, true);
    uint64_t nlist = get<uint64_t>(f);
    uint64_t nprobe = get<uint64_t>(f);
    FAISS_THROW_IF_NOT_MSG(
            nlist >= 1 && nlist <= kMaxNlist, "TurboQuant: corrupt file: nlist");
    // FAISS allows nprobe > nlist (search clamps it)
    FAISS_THROW_IF_NOT_MSG(
            nprobe >= 1 && nprobe <= (uint64_t(1) << 40), "TurboQuant: corrupt file: nprobe");
    std::unique_ptr<Index> quantizer(read_quantizer(f, io_flags, depth, h, nlist));
    std::unique_ptr<IndexIVFTurboQuant> idx(new IndexIVFTurboQuant());
    apply_header(idx.get(), h);
    idx->ntotal = 0;
    idx->nlist = nlist;
    idx->nprobe = nprobe;
    uint8_t by_residual = get<uint8_t>(f);
    FAISS_THROW_IF_NOT_MSG(by_residual <= 1, "TurboQuant: corrupt file: by_residual");
    idx->by_residual = by_residual;
    get_codec(f, idx->tq, h);
    idx->code_size = idx->tq.code_size;
    int32_t dm_type = get<int32_t>(f);
    FAISS_THROW_IF_NOT_MSG(
            dm_type >= DirectMap::NoMap && dm_type <= DirectMap::Hashtable,
            "TurboQuant: corrupt file: direct map type");
    std::vector<idx_t> dm;
    if (dm_type != DirectMap::NoMap) {
        get_ids(f, dm, uint64_t(h.ntotal));
    }
    if (dm_type == DirectMap::Hashtable) {
        std::vector<idx_t> keys;
        get_ids(f, keys, uint64_t(h.ntotal));
        for (size_t i = 0; i < keys.size(); i++) {
            idx->direct_map.hashtable[keys[i]] = dm[i];
        }
    } else if (dm_type == DirectMap::Array) {
        idx->direct_map.array = dm;
    }
    idx->direct_map.type = DirectMap::Type(dm_type);
    InvertedLists* il = read_invlists(f, nlist, idx->code_size, h.ntotal);
    idx->replace_invlists(il, true);
    idx->quantizer = quantizer.release();
    idx->own_fields = true;
    idx->ntotal = h.ntotal;
    check_direct_map(idx.get());
    return idx.release();
}

/// a wrapped index must use the wrapper's metric and training state
void check_sub_index(const Index* sub, const Header& h, const char* what) {
    FAISS_THROW_IF_NOT_FMT(
            sub->metric_type == MetricType(h.metric) &&
                    (sub->metric_type == METRIC_L2 ||
                     sub->metric_type == METRIC_INNER_PRODUCT),
            "TurboQuant: corrupt file: %s sub-index metric",
            what);
    FAISS_THROW_IF_NOT_FMT(
            sub->is_trained == h.is_trained,
            "TurboQuant: corrupt file: %s sub-index training state",
            what);
}

/// IDMap translates the labels of its sub-index as positions 0..ntotal-1: an IVF
/// sub-index returns its stored ids instead, so those must be positions too
void check_labels_are_positions(const Index* sub) {
    while (auto* p = dynamic_cast<const IndexPreTransform*>(sub)) {
        sub = p->index;
    }
    auto* ivf = dynamic_cast<const IndexIVF*>(sub);
    if (!ivf) {
        return;
    }
    for (size_t l = 0; l < ivf->nlist; l++) {
        size_t n = ivf->invlists->list_size(l);
        InvertedLists::ScopedIds ids(ivf->invlists, l);
        for (size_t j = 0; j < n; j++) {
            FAISS_THROW_IF_NOT_MSG(
                    ids[j] >= 0 && ids[j] < sub->ntotal,
                    "TurboQuant: corrupt file: IDMap over an IVF index with ids that are "
                    "not positions");
        }
    }
}

/// the end of both IDMap readers (ours and FAISS's layout): the wrapper over a checked
/// sub-index whose labels are positions, the ids read from the file
Index* finish_idmap(IOReader* f, const Header& h, std::unique_ptr<Index> sub, bool two) {
    check_labels_are_positions(sub.get());
    std::unique_ptr<IndexIDMap> idx(two ? new IndexIDMap2() : new IndexIDMap());
    apply_header(idx.get(), h);
    get_ids(f, idx->id_map, uint64_t(h.ntotal));
    idx->index = sub.release();
    idx->own_fields = true;
    if (two) {
        static_cast<IndexIDMap2*>(idx.get())->construct_rev_map();
    }
    return idx.release();
}

Index* read_idmap(IOReader* f, int io_flags, int depth, bool two) {
    Header h = get_header(f, false);
    std::unique_ptr<Index> sub(read_any(f, io_flags, depth + 1));
    FAISS_THROW_IF_NOT_MSG(
            sub->d == h.d && sub->ntotal == h.ntotal,
            "TurboQuant: corrupt file: IDMap does not match its index");
    check_sub_index(sub.get(), h, "IDMap");
    return finish_idmap(f, h, std::move(sub), two);
}

/* FAISS's own layouts for the blocks most often met (plain flat indexes, IDMap wrappers,
 * vector transforms), read here with the same discipline as ours: FAISS 1.7.3's reader
 * sizes each vector from the file before checking that the bytes exist and leaks the
 * half-built object when the read then fails (~190 MB per crafted 237-byte file). */

/// READVECTOR's layout (uint64 count, then the elements), read chunk by chunk
template <class T>
void get_faiss_vector(IOReader* f, std::vector<T>& v, uint64_t max_count) {
    uint64_t n = get<uint64_t>(f);
    FAISS_THROW_IF_NOT_FMT(
            n <= max_count,
            "corrupt file: vector of %llu elements (at most %llu expected)",
            (unsigned long long)n,
            (unsigned long long)max_count);
    get_elements(f, v, n);
}

/// read_index_header's layout: d, ntotal, two unused words, is_trained, metric[, arg];
/// `l2_or_ip`: the index type supports only those two metrics
Header get_faiss_header(IOReader* f, bool l2_or_ip = false) {
    Header h;
    h.d = get<int32_t>(f);
    h.ntotal = get<int64_t>(f);
    get<int64_t>(f);
    get<int64_t>(f);
    uint8_t trained = get<uint8_t>(f);
    h.metric = get<int32_t>(f);
    h.metric_arg = h.metric > 1 ? get<float>(f) : 0.0f;
    FAISS_THROW_IF_NOT_FMT(h.d >= 0 && h.d <= kMaxDim, "corrupt file: dimension %d", h.d);
    FAISS_THROW_IF_NOT_FMT(
            h.ntotal >= 0 && h.ntotal <= kMaxNtotal,
            "corrupt file: ntotal %lld",
            (long long)h.ntotal);
    FAISS_THROW_IF_NOT_MSG(trained <= 1, "corrupt file: is_trained flag");
    FAISS_THROW_IF_NOT_FMT(
            !l2_or_ip || h.metric == METRIC_L2 || h.metric == METRIC_INNER_PRODUCT,
            "corrupt file: metric %d",
            h.metric);
    h.is_trained = trained;
    return h;
}

/// IxFI / IxF2 / IxFl: header, then the vectors as a float count and the floats
Index* read_faiss_flat(IOReader* f, uint32_t tag) {
    Header h = get_faiss_header(f);
    std::unique_ptr<IndexFlat> idx(
            tag == fcc("IxFI")       ? (IndexFlat*)new IndexFlatIP()
                    : tag == fcc("IxF2") ? (IndexFlat*)new IndexFlatL2()
                                         : new IndexFlat());
    apply_header(idx.get(), h);
    idx->code_size = sizeof(float) * size_t(h.d);
    uint64_t nfloats = get<uint64_t>(f);
    FAISS_THROW_IF_NOT_FMT(
            nfloats == uint64_t(h.ntotal) * uint64_t(h.d),
            "corrupt file: flat index holds %llu floats for %lld vectors of d=%d",
            (unsigned long long)nfloats,
            (long long)h.ntotal,
            h.d);
    get_bytes(f, idx->codes, nfloats * sizeof(float));
    return idx.release();
}

/// IxMp / IxM2: header, the wrapped index, then the ids
Index* read_faiss_idmap(IOReader* f, int io_flags, int depth, bool two) {
    Header h = get_faiss_header(f);
    std::unique_ptr<Index> sub(read_any(f, io_flags, depth + 1));
    FAISS_THROW_IF_NOT_MSG(
            sub->d == h.d && sub->ntotal == h.ntotal,
            "corrupt file: IDMap does not match its index");
    h.metric = sub->metric_type; // as IndexIDMap's constructor sets it
    h.metric_arg = sub->metric_arg;
    return finish_idmap(f, h, std::move(sub), two);
}

/// FAISS's "ilar" inverted lists: nlist, code size, the list sizes ("full" or "sprs"),
/// then codes and ids list by list
InvertedLists* read_faiss_invlists(IOReader* f, uint64_t nlist, size_t code_size, int64_t ntotal) {
    FAISS_THROW_IF_NOT_MSG(
            get<uint32_t>(f) == fcc("ilar"),
            "corrupt file: unsupported inverted lists (only in-file array lists are read)");
    FAISS_THROW_IF_NOT_MSG(
            get<uint64_t>(f) == nlist && get<uint64_t>(f) == code_size,
            "corrupt file: inverted lists shape");
    std::vector<uint64_t> sizes(nlist, 0), raw;
    const uint32_t list_type = get<uint32_t>(f);
    if (list_type == fcc("full")) {
        get_faiss_vector(f, raw, nlist);
        FAISS_THROW_IF_NOT_MSG(raw.size() == nlist, "corrupt file: list size count");
        sizes = raw;
    } else if (list_type == fcc("sprs")) {
        get_faiss_vector(f, raw, 2 * nlist);
        FAISS_THROW_IF_NOT_MSG(raw.size() % 2 == 0, "corrupt file: sparse list sizes");
        for (size_t j = 0; j < raw.size(); j += 2) {
            FAISS_THROW_IF_NOT_MSG(raw[j] < nlist, "corrupt file: list number");
            sizes[raw[j]] = raw[j + 1];
        }
    } else {
        FAISS_THROW_MSG("corrupt file: inverted list size encoding");
    }
    uint64_t total = 0;
    for (uint64_t n : sizes) {
        FAISS_THROW_IF_NOT_MSG(
                n <= uint64_t(ntotal) - total, "corrupt file: inverted list sizes exceed ntotal");
        total += n;
    }
    FAISS_THROW_IF_NOT_MSG(total == uint64_t(ntotal), "corrupt file: list sizes != ntotal");
    std::unique_ptr<ArrayInvertedLists> il(new ArrayInvertedLists(nlist, code_size));
    std::vector<uint8_t> codes, ids;
    for (size_t l = 0; l < nlist; l++) {
        if (sizes[l] == 0) {
            continue;
        }
        get_bytes(f, codes, sizes[l] * code_size);
        get_bytes(f, ids, sizes[l] * sizeof(idx_t));
        il->add_entries(l, sizes[l], reinterpret_cast<const idx_t*>(ids.data()), codes.data());
    }
    return il.release();
}

/// IwFl: IVF header (nlist, nprobe, quantizer, direct map), then the lists of raw floats
Index* read_faiss_ivfflat(IOReader* f, int io_flags, int depth) {
    Header h = get_faiss_header(f, true);
    uint64_t nlist = get<uint64_t>(f), nprobe = get<uint64_t>(f);
    FAISS_THROW_IF_NOT_MSG(nlist >= 1 && nlist <= kMaxNlist, "corrupt file: nlist");
    FAISS_THROW_IF_NOT_MSG(nprobe >= 1 && nprobe <= (uint64_t(1) << 40), "corrupt file: nprobe");
    std::unique_ptr<Index> quantizer(read_quantizer(f, io_flags, depth, h, nlist));
    std::unique_ptr<IndexIVFFlat> idx(new IndexIVFFlat());
    apply_header(idx.get(), h);
    idx->nlist = nlist;
    idx->nprobe = nprobe;
    idx->code_size = sizeof(float) * size_t(h.d);
    const int dm_type = get<int8_t>(f);
    FAISS_THROW_IF_NOT_MSG(
            dm_type >= DirectMap::NoMap && dm_type <= DirectMap::Hashtable,
            "corrupt file: direct map type");
    get_faiss_vector(f, idx->direct_map.array, uint64_t(h.ntotal));
    FAISS_THROW_IF_NOT_MSG(
            dm_type == DirectMap::Array ? idx->direct_map.array.size() == uint64_t(h.ntotal)
                                        : idx->direct_map.array.empty(),
            "corrupt file: direct map size");
    if (dm_type == DirectMap::Hashtable) {
        std::vector<std::pair<idx_t, idx_t>> pairs;
        get_faiss_vector(f, pairs, uint64_t(h.ntotal));
        for (auto& kv : pairs) {
            idx->direct_map.hashtable[kv.first] = kv.second;
        }
    }
    idx->direct_map.type = DirectMap::Type(dm_type);
    idx->replace_invlists(read_faiss_invlists(f, nlist, idx->code_size, h.ntotal), true);
    idx->quantizer = quantizer.release();
    idx->own_fields = true;
    check_direct_map(idx.get());
    return idx.release();
}

/// IHNf: header, the HNSW graph (read_HNSW's layout), then the flat storage index
Index* read_faiss_hnswflat(IOReader* f, int io_flags, int depth) {
    Header h = get_faiss_header(f, true);
    std::unique_ptr<IndexHNSWFlat> idx(new IndexHNSWFlat());
    apply_header(idx.get(), h);
    HNSW& g = idx->hnsw;
    const uint64_t n = uint64_t(h.ntotal);
    get_faiss_vector(f, g.assign_probas, 64);
    get_faiss_vector(f, g.cum_nneighbor_per_level, 65);
    get_faiss_vector(f, g.levels, n);
    get_faiss_vector(f, g.offsets, n + 1);
    // neighbours: at most offsets.back() entries, checked below; bounded by the file here
    get_faiss_vector(f, g.neighbors, uint64_t(kMaxNtotal));
    g.entry_point = get<int32_t>(f);
    g.max_level = get<int32_t>(f);
    g.efConstruction = get<int32_t>(f);
    g.efSearch = get<int32_t>(f);
    g.upper_beam = get<int32_t>(f);
    // the invariants HNSW::search relies on: one level and one offset range per vector,
    // ranges sized by the cumulative neighbour counts, neighbours and entry point valid
    const auto& cum = g.cum_nneighbor_per_level;
    FAISS_THROW_IF_NOT_MSG(
            g.levels.size() == n && g.offsets.size() == n + 1 && g.offsets[0] == 0 &&
                    g.offsets[n] == g.neighbors.size() && !cum.empty() && cum[0] == 0,
            "corrupt file: HNSW sizes");
    FAISS_THROW_IF_NOT_MSG(
            g.max_level >= -1 && g.max_level + 1 < int(cum.size()) &&
                    g.entry_point >= -1 && g.entry_point < int64_t(n) &&
                    (n == 0 || (g.entry_point >= 0 && g.max_level >= 0)) &&
                    g.efSearch >= 1 && g.efConstruction >= 1 && g.upper_beam >= 1,
            "corrupt file: HNSW parameters");
    for (size_t l = 1; l < cum.size(); l++) {
        FAISS_THROW_IF_NOT_MSG(cum[l] >= cum[l - 1], "corrupt file: HNSW level sizes");
    }
    for (uint64_t i = 0; i < n; i++) {
        const int lv = g.levels[i];
        FAISS_THROW_IF_NOT_MSG(
                lv >= 1 && lv <= g.max_level + 1 &&
                        g.offsets[i + 1] >= g.offsets[i] &&
                        g.offsets[i + 1] - g.offsets[i] == size_t(cum[lv]),
                "corrupt file: HNSW node levels");
    }
    if (n > 0) {
        FAISS_THROW_IF_NOT_MSG(
                g.levels[g.entry_point] == g.max_level + 1, "corrupt file: HNSW entry point");
    }
    for (int nb : g.neighbors) {
        FAISS_THROW_IF_NOT_MSG(nb >= -1 && nb < int64_t(n), "corrupt file: HNSW neighbour");
    }
    std::unique_ptr<Index> storage(read_any(f, io_flags, depth + 1));
    FAISS_THROW_IF_NOT_MSG(
            dynamic_cast<IndexFlat*>(storage.get()) && storage->d == h.d &&
                    storage->ntotal == h.ntotal && storage->metric_type == MetricType(h.metric),
            "corrupt file: HNSW storage does not match");
    idx->storage = storage.release();
    idx->own_fields = true;
    return idx.release();
}

/// IxSQ: header, the scalar quantizer (qtype, range statistic, d, code size, trained
/// ranges), then the codes
Index* read_faiss_sq(IOReader* f) {
    Header h = get_faiss_header(f);
    std::unique_ptr<IndexScalarQuantizer> idx(new IndexScalarQuantizer());
    apply_header(idx.get(), h);
    ScalarQuantizer& sq = idx->sq;
    const int32_t qtype = get<int32_t>(f), rangestat = get<int32_t>(f);
    sq.rangestat_arg = get<float>(f);
    const uint64_t d = get<uint64_t>(f), code_size = get<uint64_t>(f);
    FAISS_THROW_IF_NOT_MSG(
            qtype >= ScalarQuantizer::QT_8bit && qtype <= ScalarQuantizer::QT_6bit &&
                    rangestat >= ScalarQuantizer::RS_minmax &&
                    rangestat <= ScalarQuantizer::RS_optim && d == uint64_t(h.d),
            "corrupt file: scalar quantizer parameters");
    sq.qtype = ScalarQuantizer::QuantizerType(qtype);
    sq.rangestat = ScalarQuantizer::RangeStat(rangestat);
    sq.d = d;
    sq.set_derived_sizes();
    FAISS_THROW_IF_NOT_MSG(sq.code_size == code_size, "corrupt file: scalar quantizer code size");
    get_faiss_vector(f, sq.trained, 2 * d);
    // the ranges the codec reads: one pair per dimension, one shared pair, or none
    const bool uniform = qtype == ScalarQuantizer::QT_8bit_uniform ||
            qtype == ScalarQuantizer::QT_4bit_uniform;
    const bool none = qtype == ScalarQuantizer::QT_fp16 || qtype == ScalarQuantizer::QT_8bit_direct;
    FAISS_THROW_IF_NOT_MSG(
            sq.trained.size() == (none ? 0 : uniform ? 2 : 2 * d) ||
                    (!h.is_trained && sq.trained.empty()),
            "corrupt file: scalar quantizer ranges");
    idx->code_size = code_size;
    const uint64_t nbytes = get<uint64_t>(f);
    FAISS_THROW_IF_NOT_MSG(
            nbytes == uint64_t(h.ntotal) * code_size, "corrupt file: scalar quantizer codes");
    get_bytes(f, idx->codes, nbytes);
    return idx.release();
}

/* read_VectorTransform's layouts. Vector sizes are checked against d_in / d_out, which
 * FAISS writes after the vectors, once the whole block is read. */
VectorTransform* read_faiss_transform(IOReader* f, uint32_t tag, int depth) {
    FAISS_THROW_IF_NOT_MSG(depth < 4, "corrupt file: transform nesting too deep");
    const uint64_t kMaxMat = uint64_t(kMaxDim) * uint64_t(kMaxDim);
    std::unique_ptr<VectorTransform> vt;
    if (tag == fcc("rrot") || tag == fcc("PCAm") || tag == fcc("LTra") ||
        tag == fcc("PcAm") || tag == fcc("Viqm") || tag == fcc("Pcam")) {
        LinearTransform* lt = nullptr;
        if (tag == fcc("rrot")) {
            lt = new RandomRotationMatrix();
            vt.reset(lt);
        } else if (tag == fcc("Viqm")) {
            auto* itq = new ITQMatrix();
            vt.reset(itq);
            itq->max_iter = get<int32_t>(f);
            itq->seed = get<int32_t>(f);
            lt = itq;
        } else if (tag == fcc("LTra")) {
            lt = new LinearTransform();
            vt.reset(lt);
        } else {
            auto* pca = new PCAMatrix();
            vt.reset(pca);
            pca->eigen_power = get<float>(f);
            if (tag == fcc("Pcam")) {
                pca->epsilon = get<float>(f);
            }
            pca->random_rotation = get<uint8_t>(f);
            if (tag != fcc("PCAm")) {
                pca->balanced_bins = get<int32_t>(f);
            }
            get_faiss_vector(f, pca->mean, kMaxDim);
            get_faiss_vector(f, pca->eigenvalues, kMaxDim);
            get_faiss_vector(f, pca->PCAMat, kMaxMat);
            lt = pca;
        }
        lt->have_bias = get<uint8_t>(f);
        get_faiss_vector(f, lt->A, kMaxMat);
        get_faiss_vector(f, lt->b, kMaxDim);
    } else if (tag == fcc("RmDT")) {
        auto* rdt = new RemapDimensionsTransform();
        vt.reset(rdt);
        get_faiss_vector(f, rdt->map, kMaxDim);
    } else if (tag == fcc("VNrm")) {
        auto* nt = new NormalizationTransform();
        vt.reset(nt);
        nt->norm = get<float>(f);
    } else if (tag == fcc("VCnt")) {
        auto* ct = new CenteringTransform();
        vt.reset(ct);
        get_faiss_vector(f, ct->mean, kMaxDim);
    } else if (tag == fcc("Viqt")) {
        auto* itqt = new ITQTransform();
        vt.reset(itqt);
        get_faiss_vector(f, itqt->mean, kMaxDim);
        itqt->do_pca = get<uint8_t>(f);
        std::unique_ptr<VectorTransform> a(read_faiss_transform(f, get<uint32_t>(f), depth + 1));
        auto* itqm = dynamic_cast<ITQMatrix*>(a.get());
        FAISS_THROW_IF_NOT_MSG(itqm, "corrupt file: ITQ transform without its matrix");
        itqt->itq = *itqm;
        std::unique_ptr<VectorTransform> b(read_faiss_transform(f, get<uint32_t>(f), depth + 1));
        auto* pi = dynamic_cast<LinearTransform*>(b.get());
        FAISS_THROW_IF_NOT_MSG(pi, "corrupt file: ITQ transform without its projection");
        itqt->pca_then_itq = *pi;
    } else {
        FAISS_THROW_FMT("corrupt file: unknown vector transform tag 0x%08x", tag);
    }
    vt->d_in = get<int32_t>(f);
    vt->d_out = get<int32_t>(f);
    vt->is_trained = get<uint8_t>(f);
    FAISS_THROW_IF_NOT_MSG(
            vt->d_in >= 1 && vt->d_in <= kMaxDim && vt->d_out >= 1 && vt->d_out <= kMaxDim,
            "corrupt file: transform dimensions");
    const uint64_t di = vt->d_in, dout = vt->d_out;
    auto size_in = [](size_t n, std::initializer_list<uint64_t> allowed) {
        for (uint64_t a : allowed) {
            if (n == a) {
                return true;
            }
        }
        return false;
    };
    if (auto* lt = dynamic_cast<LinearTransform*>(vt.get())) {
        const bool trained = vt->is_trained;
        FAISS_THROW_IF_NOT_MSG(
                size_in(lt->A.size(), {trained ? di * dout : 0, di * dout}) &&
                        (!lt->have_bias || size_in(lt->b.size(), {trained ? dout : 0, dout})),
                "corrupt file: linear transform sizes");
        if (auto* pca = dynamic_cast<PCAMatrix*>(lt)) {
            FAISS_THROW_IF_NOT_MSG(
                    size_in(pca->mean.size(), {0, di}) &&
                            size_in(pca->eigenvalues.size(), {0, di, dout}) &&
                            size_in(pca->PCAMat.size(), {0, di * di, di * dout}),
                    "corrupt file: PCA sizes");
        }
        if (trained) {
            lt->set_is_orthonormal();
        }
    } else if (auto* rdt = dynamic_cast<RemapDimensionsTransform*>(vt.get())) {
        FAISS_THROW_IF_NOT_MSG(rdt->map.size() == dout, "corrupt file: remap size");
        for (int m : rdt->map) {
            FAISS_THROW_IF_NOT_MSG(m >= -1 && m < int(di), "corrupt file: remap entry");
        }
    } else if (auto* ct = dynamic_cast<CenteringTransform*>(vt.get())) {
        FAISS_THROW_IF_NOT_MSG(
                di == dout && size_in(ct->mean.size(), {vt->is_trained ? di : 0, di}),
                "corrupt file: centering sizes");
    } else if (auto* itqt = dynamic_cast<ITQTransform*>(vt.get())) {
        FAISS_THROW_IF_NOT_MSG(
                size_in(itqt->mean.size(), {0, di}) &&
                        uint64_t(itqt->pca_then_itq.d_in) == di &&
                        uint64_t(itqt->pca_then_itq.d_out) == dout,
                "corrupt file: ITQ sizes");
    } else {
        FAISS_THROW_IF_NOT_MSG(di == dout, "corrupt file: normalisation sizes");
    }
    return vt.release();
}

/// n floats, n checked against `expected` (one of the allowed sizes) before reading
void get_floats(IOReader* f, std::vector<float>& v, std::initializer_list<uint64_t> allowed) {
    uint64_t n = get<uint64_t>(f);
    bool ok = false;
    for (uint64_t a : allowed) {
        ok = ok || n == a;
    }
    FAISS_THROW_IF_NOT_MSG(ok, "TurboQuant: corrupt file: transform array size");
    get_elements(f, v, n);
}

VectorTransform* read_linear(IOReader* f) {
    uint32_t version = get<uint32_t>(f); // the block's layout is the same in versions 1 and 2
    FAISS_THROW_IF_NOT_MSG(
            version >= kOldestFormatVersion && version <= kFormatVersion,
            "TurboQuant: unsupported transform version");
    uint8_t kind = get<uint8_t>(f);
    int32_t d_in = get<int32_t>(f), d_out = get<int32_t>(f);
    uint8_t trained = get<uint8_t>(f), bias = get<uint8_t>(f), ortho = get<uint8_t>(f);
    FAISS_THROW_IF_NOT_MSG(kind <= kLinearPCA, "TurboQuant: corrupt file: transform kind");
    FAISS_THROW_IF_NOT_MSG(
            d_in >= 1 && d_in <= kMaxDim && d_out >= 1 && d_out <= kMaxDim &&
                    trained <= 1 && bias <= 1 && ortho <= 1,
            "TurboQuant: corrupt file: transform header");
    std::unique_ptr<LinearTransform> lt;
    if (kind == kLinearPCA) {
        lt.reset(new PCAMatrix(d_in, d_out));
    } else if (kind == kLinearRR) {
        lt.reset(new RandomRotationMatrix(d_in, d_out));
    } else {
        lt.reset(new LinearTransform(d_in, d_out, bias));
    }
    lt->is_trained = trained;
    lt->have_bias = bias;
    lt->is_orthonormal = ortho;
    const uint64_t di = d_in, dout = d_out;
    get_floats(f, lt->A, {trained ? di * dout : 0});
    get_floats(f, lt->b, {bias && trained ? dout : 0});
    if (auto* pca = dynamic_cast<PCAMatrix*>(lt.get())) {
        pca->eigen_power = get<float>(f);
        pca->epsilon = get<float>(f);
        uint8_t rr = get<uint8_t>(f);
        FAISS_THROW_IF_NOT_MSG(rr <= 1, "TurboQuant: corrupt file: PCA flags");
        pca->random_rotation = rr;
        pca->max_points_per_d = get<uint64_t>(f);
        pca->balanced_bins = get<int32_t>(f);
        get_floats(f, pca->mean, {0, di});
        get_floats(f, pca->eigenvalues, {0, di, dout});
        get_floats(f, pca->PCAMat, {0, di * di, di * dout});
    }
    return lt.release();
}

VectorTransform* read_transform(IOReader* f) {
    uint32_t tag = get<uint32_t>(f);
    if (tag == fcc(kLinear)) {
        return read_linear(f);
    }
    return read_faiss_transform(f, tag, 0);
}

Index* read_pretransform(IOReader* f, int io_flags, int depth) {
    Header h = get_header(f, false);
    uint64_t nchain = get<uint64_t>(f);
    FAISS_THROW_IF_NOT_MSG(
            nchain <= kMaxChain, "TurboQuant: corrupt file: transform chain length");
    std::vector<std::unique_ptr<VectorTransform>> chain;
    int expected_d = h.d;
    for (uint64_t i = 0; i < nchain; i++) {
        chain.emplace_back(read_transform(f));
        FAISS_THROW_IF_NOT_MSG(
                chain.back()->d_in == expected_d,
                "TurboQuant: corrupt file: transform chain dimensions");
        expected_d = chain.back()->d_out;
    }
    std::unique_ptr<Index> sub(read_any(f, io_flags, depth + 1));
    FAISS_THROW_IF_NOT_MSG(
            sub->d == expected_d && sub->ntotal == h.ntotal,
            "TurboQuant: corrupt file: PreTransform does not match its index");
    check_sub_index(sub.get(), h, "PreTransform");
    std::unique_ptr<IndexPreTransform> idx(new IndexPreTransform());
    apply_header(idx.get(), h);
    for (auto& vt : chain) {
        idx->chain.push_back(vt.release());
    }
    idx->index = sub.release();
    idx->own_fields = true;
    return idx.release();
}

Index* read_refine(IOReader* f, int io_flags, int depth) {
    Header h = get_header(f, false);
    uint8_t flat = get<uint8_t>(f);
    float k_factor = get<float>(f);
    FAISS_THROW_IF_NOT_MSG(flat <= 1, "TurboQuant: corrupt file: refine kind");
    FAISS_THROW_IF_NOT_MSG(
            k_factor >= 1 && k_factor <= 1e6, "TurboQuant: corrupt file: k_factor");
    std::unique_ptr<Index> base(read_any(f, io_flags, depth + 1));
    std::unique_ptr<Index> refine(read_any(f, io_flags, depth + 1));
    FAISS_THROW_IF_NOT_MSG(
            base->d == h.d && refine->d == h.d && base->ntotal == h.ntotal &&
                    refine->ntotal == h.ntotal,
            "TurboQuant: corrupt file: Refine does not match its indexes");
    check_sub_index(base.get(), h, "Refine base");
    check_sub_index(refine.get(), h, "Refine");
    std::unique_ptr<IndexRefine> idx;
    if (flat) {
        FAISS_THROW_IF_NOT_MSG(
                dynamic_cast<IndexFlat*>(refine.get()),
                "TurboQuant: corrupt file: RefineFlat without a flat index");
        idx.reset(new IndexRefineFlat());
    } else {
        idx.reset(new IndexRefine());
    }
    apply_header(idx.get(), h);
    idx->k_factor = k_factor;
    idx->base_index = base.release();
    idx->refine_index = refine.release();
    idx->own_fields = true;
    idx->own_refine_index = true;
    return idx.release();
}

void check_labels_are_positions(const Index* sub);

/* FAISS 1.7.3's reader accepts some inconsistent files that then crash on search (an
 * IDMap whose id_map is shorter than ntotal, a flat index whose ntotal * code_size
 * overflows, an IVF whose quantizer holds more centroids than nlist). Whatever FAISS
 * hands back is checked here for the invariants its search relies on. */
void validate_faiss_tree(const Index* idx, int depth) {
    FAISS_THROW_IF_NOT_MSG(depth < 16, "corrupt file: nesting too deep");
    FAISS_THROW_IF_NOT_MSG(
            idx->ntotal >= 0 && idx->ntotal <= kMaxNtotal && idx->d >= 0,
            "corrupt file: index size");
    const int metric = int(idx->metric_type);
    FAISS_THROW_IF_NOT_FMT(
            (metric >= METRIC_INNER_PRODUCT && metric <= METRIC_Lp) ||
                    (metric >= METRIC_Canberra && metric <= METRIC_JensenShannon),
            "corrupt file: unknown metric type %d",
            metric);
    if (auto* fc = dynamic_cast<const IndexFlatCodes*>(idx)) {
        FAISS_THROW_IF_NOT_MSG(
                fc->code_size > 0 && fc->code_size < (size_t(1) << 30) &&
                        fc->codes.size() / fc->code_size == size_t(fc->ntotal) &&
                        fc->codes.size() % fc->code_size == 0,
                "corrupt file: flat index codes do not match ntotal");
    }
    if (auto* m = dynamic_cast<const IndexIDMap*>(idx)) {
        FAISS_THROW_IF_NOT_MSG(m->index, "corrupt file: IDMap without index");
        FAISS_THROW_IF_NOT_MSG(
                m->id_map.size() == size_t(idx->ntotal) && m->index->ntotal == idx->ntotal,
                "corrupt file: IDMap id_map does not match ntotal");
        validate_faiss_tree(m->index, depth + 1);
        check_labels_are_positions(m->index);
    }
    if (auto* p = dynamic_cast<const IndexPreTransform*>(idx)) {
        FAISS_THROW_IF_NOT_MSG(p->index, "corrupt file: PreTransform without index");
        int dd = idx->d;
        for (const VectorTransform* vt : p->chain) {
            FAISS_THROW_IF_NOT_MSG(vt->d_in == dd, "corrupt file: transform dimensions");
            dd = vt->d_out;
        }
        FAISS_THROW_IF_NOT_MSG(
                p->index->d == dd && p->index->ntotal == idx->ntotal,
                "corrupt file: PreTransform does not match its index");
        validate_faiss_tree(p->index, depth + 1);
    }
    if (auto* r = dynamic_cast<const IndexRefine*>(idx)) {
        FAISS_THROW_IF_NOT_MSG(
                r->base_index && r->refine_index &&
                        r->base_index->ntotal == idx->ntotal &&
                        r->refine_index->ntotal == idx->ntotal,
                "corrupt file: Refine does not match its indexes");
        validate_faiss_tree(r->base_index, depth + 1);
        validate_faiss_tree(r->refine_index, depth + 1);
    }
    if (auto* ivf = dynamic_cast<const IndexIVF*>(idx)) {
        FAISS_THROW_IF_NOT_MSG(
                ivf->quantizer && ivf->invlists && ivf->invlists->nlist == ivf->nlist,
                "corrupt file: IVF structure");
        FAISS_THROW_IF_NOT_MSG(
                ivf->metric_type == METRIC_L2 || ivf->metric_type == METRIC_INNER_PRODUCT,
                "corrupt file: IVF metric type");
        validate_faiss_tree(ivf->quantizer, depth + 1);
        FAISS_THROW_IF_NOT_MSG(
                !ivf->is_trained || ivf->quantizer->ntotal == idx_t(ivf->nlist),
                "corrupt file: IVF quantizer size differs from nlist");
        size_t total = 0;
        for (size_t l = 0; l < ivf->nlist; l++) {
            total += ivf->invlists->list_size(l);
        }
        FAISS_THROW_IF_NOT_MSG(
                total == size_t(idx->ntotal), "corrupt file: IVF list sizes differ from ntotal");
    }
}

Index* read_flat_float(IOReader* f) {
    Header h = get_header(f, true);
    std::unique_ptr<IndexFlat> idx(
            h.metric == METRIC_INNER_PRODUCT ? (IndexFlat*)new IndexFlatIP(h.d)
                                             : (IndexFlat*)new IndexFlatL2(h.d));
    apply_header(idx.get(), h);
    uint64_t cs = get<uint64_t>(f);
    FAISS_THROW_IF_NOT_MSG(
            cs == sizeof(float) * size_t(h.d), "TurboQuant: corrupt file: flat code size");
    get_bytes(f, idx->codes, size_t(h.ntotal) * cs);
    idx->is_trained = true;
    return idx.release();
}

Index* read_any(IOReader* f, int io_flags, int depth) {
    FAISS_THROW_IF_NOT_MSG(depth < 8, "TurboQuant: corrupt file: nesting too deep");
    uint32_t tag = get<uint32_t>(f);
    if (tag == fcc(kFlat)) return read_flat(f);
    if (tag == fcc(kFlatFloat)) return read_flat_float(f);
    if (tag == fcc(kIVF)) return read_ivf(f, io_flags, depth);
    if (tag == fcc(kIDMap)) return read_idmap(f, io_flags, depth, false);
    if (tag == fcc(kIDMap2)) return read_idmap(f, io_flags, depth, true);
    if (tag == fcc(kPreTransform)) return read_pretransform(f, io_flags, depth);
    if (tag == fcc(kRefine)) return read_refine(f, io_flags, depth);
    std::unique_ptr<Index> faiss_block;
    if (tag == fcc("IxFI") || tag == fcc("IxF2") || tag == fcc("IxFl")) {
        faiss_block.reset(read_faiss_flat(f, tag));
    } else if (tag == fcc("IxMp") || tag == fcc("IxM2")) {
        faiss_block.reset(read_faiss_idmap(f, io_flags, depth, tag == fcc("IxM2")));
    } else if (tag == fcc("IwFl")) {
        faiss_block.reset(read_faiss_ivfflat(f, io_flags, depth));
    } else if (tag == fcc("IHNf")) {
        faiss_block.reset(read_faiss_hnswflat(f, io_flags, depth));
    } else if (tag == fcc("IxSQ")) {
        faiss_block.reset(read_faiss_sq(f));
    }
    if (faiss_block) {
        validate_faiss_tree(faiss_block.get(), 0);
        return faiss_block.release();
    }
    PushbackReader pb(f, tag);
    std::unique_ptr<Index> idx(read_index(&pb, io_flags));
    validate_faiss_tree(idx.get(), 0);
    return idx.release();
}

} // namespace

bool tq_contains_turboquant(const Index* idx) {
    if (!idx) {
        return false;
    }
    if (dynamic_cast<const IndexTurboQuant*>(idx) ||
        dynamic_cast<const IndexIVFTurboQuant*>(idx)) {
        return true;
    }
    if (auto* m = dynamic_cast<const IndexIDMap*>(idx)) {
        return tq_contains_turboquant(m->index);
    }
    if (auto* p = dynamic_cast<const IndexPreTransform*>(idx)) {
        return tq_contains_turboquant(p->index);
    }
    if (auto* r = dynamic_cast<const IndexRefine*>(idx)) {
        return tq_contains_turboquant(r->base_index) ||
                tq_contains_turboquant(r->refine_index);
    }
    if (auto* ivf = dynamic_cast<const IndexIVF*>(idx)) {
        return tq_contains_turboquant(ivf->quantizer);
    }
    return false;
}

namespace {

/// true for IndexFlat / IndexFlatIP / IndexFlatL2 exactly (not their other subclasses)
bool is_plain_flat(const Index* idx) {
    const std::type_info& t = typeid(*idx);
    return t == typeid(IndexFlat) || t == typeid(IndexFlatIP) || t == typeid(IndexFlatL2);
}

/* Children of our wrappers: a plain flat index (coarse quantizer, RFlat refinement) is
 * written in our own format, so reading it back never goes through FAISS 1.7.3's reader,
 * which sizes buffers from the file before checking that the bytes exist. */
void write_child(const Index* idx, IOWriter* f) {
    if (is_plain_flat(idx)) {
        auto* flat = static_cast<const IndexFlat*>(idx);
        put_header(f, kFlatFloat, flat);
        put(f, uint64_t(flat->code_size));
        put_bytes(f, flat->codes.data(), flat->codes.size());
        return;
    }
    tq_write_index(idx, f);
}

} // namespace

void tq_write_index(const Index* idx, IOWriter* f) {
    FAISS_THROW_IF_NOT_MSG(idx, "write_index: null index");
    if (!tq_contains_turboquant(idx)) {
        write_index(idx, f);
        return;
    }
    if (auto* tq = dynamic_cast<const IndexTurboQuant*>(idx)) {
        put_header(f, kFlat, tq);
        put_codec(f, tq->tq);
        put(f, uint64_t(tq->code_size));
        put_bytes(f, tq->codes.data(), tq->codes.size());
    } else if (auto* ivf = dynamic_cast<const IndexIVFTurboQuant*>(idx)) {
        put_header(f, kIVF, ivf);
        put(f, uint64_t(ivf->nlist));
        put(f, uint64_t(ivf->nprobe));
        write_child(ivf->quantizer, f);
        put(f, uint8_t(ivf->by_residual));
        put_codec(f, ivf->tq);
        const DirectMap& dm = ivf->direct_map;
        put(f, int32_t(dm.type));
        if (dm.type == DirectMap::Array) {
            put_ids(f, dm.array);
        } else if (dm.type == DirectMap::Hashtable) {
            std::vector<idx_t> keys, vals;
            for (auto& kv : dm.hashtable) {
                keys.push_back(kv.first);
                vals.push_back(kv.second);
            }
            put_ids(f, vals);
            put_ids(f, keys);
        }
        write_invlists(f, ivf->invlists);
    } else if (auto* m = dynamic_cast<const IndexIDMap*>(idx)) {
        put_header(f, dynamic_cast<const IndexIDMap2*>(idx) ? kIDMap2 : kIDMap, m);
        write_child(m->index, f);
        put_ids(f, m->id_map);
    } else if (auto* p = dynamic_cast<const IndexPreTransform*>(idx)) {
        put_header(f, kPreTransform, p);
        put(f, uint64_t(p->chain.size()));
        for (const VectorTransform* vt : p->chain) {
            write_transform(f, vt);
        }
        write_child(p->index, f);
    } else if (auto* r = dynamic_cast<const IndexRefine*>(idx)) {
        put_header(f, kRefine, r);
        put(f, uint8_t(dynamic_cast<const IndexRefineFlat*>(idx) ? 1 : 0));
        put(f, float(r->k_factor));
        write_child(r->base_index, f);
        write_child(r->refine_index, f);
    } else {
        FAISS_THROW_MSG(
                "TurboQuant: cannot serialise this composition (TurboQuant inside an "
                "unsupported wrapper)");
    }
}

void tq_write_index(const Index* idx, const char* fname) {
    FAISS_THROW_IF_NOT_MSG(fname, "write_index: null file name");
    // Crash safety: the previous file stays intact until the new one is complete.
    std::string tmp = std::string(fname) + ".tmp-" + std::to_string(getpid());
    FILE* fp = fopen(tmp.c_str(), "wb");
    FAISS_THROW_IF_NOT_FMT(
            fp, "write_index: cannot open %s for writing: %s", tmp.c_str(), strerror(errno));
    try {
        FileIOWriter w(fp);
        tq_write_index(idx, &w);
        FAISS_THROW_IF_NOT_MSG(fflush(fp) == 0, "write_index: flush failed");
        FAISS_THROW_IF_NOT_MSG(fsync(fileno(fp)) == 0, "write_index: fsync failed");
    } catch (...) {
        fclose(fp);
        unlink(tmp.c_str());
        throw;
    }
    fclose(fp);
    if (rename(tmp.c_str(), fname) != 0) {
        int err = errno;
        unlink(tmp.c_str());
        FAISS_THROW_FMT("write_index: cannot rename to %s: %s", fname, strerror(err));
    }
}

Index* tq_read_index(IOReader* f, int io_flags) {
    FAISS_THROW_IF_NOT_MSG(f, "read_index: null reader");
    codec_budget = kCodecBudget;
    return read_any(f, io_flags, 0);
}

Index* tq_read_index(const char* fname, int io_flags) {
    FAISS_THROW_IF_NOT_MSG(fname, "read_index: null file name");
    FileIOReader r(fname);
    return tq_read_index(&r, io_flags);
}

Index* tq_clone_index(const Index* idx) {
    if (!tq_contains_turboquant(idx)) {
        return clone_index(idx);
    }
    VectorIOWriter w;
    tq_write_index(idx, &w);
    VectorIOReader r;
    r.data.swap(w.data);
    return tq_read_index(&r, 0);
}

} // namespace faiss
