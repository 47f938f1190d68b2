// Integer fast scan for 1- to 4-bit codes: 8-bit query and codebook, exact int32
// dot products (AVX-512 VNNI), candidates re-scored by the float kernel afterwards.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace faiss {
namespace tq_kernels {

/** Integer approximation of code_dot, used to pick the candidates that are then
 * re-scored with the exact float kernel.
 *
 * The rotated query is quantised to int8 (qscale = 127 / max|q_i|) and the centroids to
 * uint8 (c8 = round(c * cscale) + 128, cscale = 127 / max|c|). For a code the kernels
 * compute the raw sum S = sum_p c8[code_p] * q8_p exactly in int32, so the result does
 * not depend on summation order and every implementation agrees bit for bit; then
 * approx_distance() applies TurboQuantizer::finish_distances' estimator to
 *   dot ~= (S - bias) / (qscale * cscale),  bias = 128 * sum_i q8_i.
 *
 * Codes are read in groups of group_bytes() bytes. For 1, 2 and 4 bits a group is 64 bytes
 * and byte j holds coordinates j * cpb + s for s = 0..cpb-1 (cpb = 8 / nbits codes per
 * byte, code s in bits s * nbits ...): the kernels extract "stream" s of all 64 bytes at
 * once, so the query is stored per group as cpb streams of 64 values (stream s, position
 * j: coordinate j * cpb + s). For 3 bits a group is 24 bytes = 64 codes, spread to one
 * byte each (byte permute + multishift), so the query is in natural order. Positions past
 * the code (padding of the last group) have q8 = 0. q8_position() is the mapping. */
struct QueryI8 {
    int nbits = 4;
    size_t ngroups = 0;     ///< groups of 64 code bytes
    size_t code_bytes = 0;  ///< packed code bytes per vector, ceil(d * nbits / 8)
    std::vector<int8_t> q8; ///< row_length() values in stream order
    int32_t bias = 0;       ///< 128 * sum(q8)
    float inv_scale = 0;    ///< 1 / (qscale * cscale)
    float qnorm2 = 0;       ///< ||q||^2 (L2 distances)
    uint8_t table[64];      ///< c8[e % 2^nbits] at e: one 64-entry byte-permute table

    /// code bytes per group: 64, or 24 (64 codes) for 3 bits
    size_t group_bytes() const {
        return nbits == 3 ? 24 : 64;
    }
    /// 64-value streams per group
    int streams() const {
        return nbits == 3 ? 1 : 8 / nbits;
    }
    /// values per vector in stream order (a multiple of 64)
    size_t row_length() const {
        return ngroups * 64 * streams();
    }
    /// position in q8 (and in a decoded row) of coordinate i, i < row_length()
    size_t q8_position(size_t i) const {
        if (nbits == 3) {
            return i;
        }
        // cpb = 8 / nbits is 8, 4 or 2: shifts, not divisions (this runs per coordinate
        // when a query is prepared, once per visited list in an IVF index with L2)
        const int lc = 3 - (nbits >> 1); // log2(cpb) for nbits 1, 2, 4
        const size_t byte = i >> lc;
        return ((((byte >> 6) << lc) | (i & ((size_t(1) << lc) - 1))) << 6) | (byte & 63);
    }
};

/// candidates kept per query by the integer scan before float re-scoring (flat and IVF)
template <class T>
T fast_scan_candidates(T k) {
    return k + (k > 16 ? k : 16); // max(2k, k + 16)
}

/// the bit widths the integer fast scan handles at the current SIMD level (3 bits needs
/// the VBMI byte permutes; the scalar reference handles all four)
bool fast_scan_i8_supports(int nbits);

/// true when the CPU has the instructions that make the integer scan pay (AVX-512 VNNI)
/// and the SIMD level is not capped below AVX-512: single queries and batches
bool fast_scan_i8_simd();

/// true when single queries of this width have a SIMD integer scan: AVX-512 VNNI, or
/// AVX2 for 1, 2 and 4 bits (batches then run the single-query scan per query)
bool fast_scan_i8_single_simd(int nbits);

/// whether an index should scan this width with the integer kernels: a SIMD scan, or the
/// scalar one when the level is capped at scalar (it is the reference of the SIMD ones)
bool fast_scan_i8_usable(int nbits);

/// prepare the 8-bit query (centroids: 2^nbits values)
void prepare_query_i8(
        const float* qrot,
        const float* centroids,
        size_t d,
        int nbits,
        float qnorm2,
        QueryI8& out);

/// the estimator on a raw sum (every implementation performs these float operations in
/// this order, so all of them return the same bits)
inline float approx_distance(int32_t sum, const QueryI8& q, float ipf, float norm, bool l2) {
    const float dot = float(sum - q.bias) * q.inv_scale;
    const float ip = ipf * dot;
    return l2 ? (q.qnorm2 + norm * norm) - 2 * ip : ip;
}

/// raw sum S of one code (the definition the SIMD kernels reproduce)
int32_t dot_sum_i8(const uint8_t* code, const QueryI8& q);

/** One query against n codes (stride bytes apart, float factors norm, ipf at byte
 * factors_offset): appends the approximate distance and position of every code that
 * beats `threshold` (L2: dis < threshold, IP: dis > threshold) to dis_out / pos_out
 * (room for n + 16 entries); returns how many. */
size_t scan_i8(
        const uint8_t* codes,
        size_t stride,
        size_t n,
        size_t factors_offset,
        const QueryI8& q,
        bool l2,
        float threshold,
        float* dis_out,
        uint32_t* pos_out);

/** Many queries at once, as an integer matrix product: a block of codes is unpacked to
 * its 8-bit centroids in stream order (decode_i8, once for many queries), the queries are
 * packed in panels of 16 (4 consecutive q8 bytes of the 16 queries side by side), and
 * each vpdpbusd multiplies 4 centroid bytes of one code into 16 queries. */
struct PanelsI8 {
    size_t nq = 0, npanels = 0, row_length = 0;
    std::vector<int8_t> b;          ///< [panel][row_length / 4][16][4]
    std::vector<int32_t> bias;      ///< [panel * 16 + lane]
    std::vector<float> inv, qnorm2; ///< [panel * 16 + lane]
};

/// pack nq queries of the same geometry (lanes past nq are zero queries, never selected)
void pack_panels_i8(const QueryI8* const* q, size_t nq, PanelsI8& out);

/// n codes -> n rows of q.row_length() centroid bytes in stream order
void decode_i8(const uint8_t* codes, size_t stride, size_t n, const QueryI8& q, uint8_t* rows);

/// the float factors of n codes: norm[v], ipf[v] (at byte offset of each code)
void load_factors(
        const uint8_t* codes,
        size_t stride,
        size_t n,
        size_t offset,
        float* ipf,
        float* norm);

struct CandidateI8 {
    uint32_t query; ///< query index in the panels
    uint32_t pos;   ///< row index in the block
    float dis;
};

/** Decoded rows (n of them) against panels [panel0, panel0 + npan): appends to `out`
 * (room for n * 16 * npan entries) every (query, row) whose approximate distance beats
 * thresholds[query]; returns how many. */
size_t scan_panels_i8(
        const uint8_t* rows,
        const float* ipf,
        const float* norm,
        size_t n,
        const PanelsI8& p,
        size_t panel0,
        size_t npan,
        bool l2,
        const float* thresholds,
        CandidateI8* out);

} // namespace tq_kernels
} // namespace faiss
