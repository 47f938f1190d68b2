// 4-bit fast path: 8-bit query and codebook, exact integer dot products (AVX-512 VNNI).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace faiss {
namespace tq_kernels {

/** Integer approximation of code_dot for 4-bit codes, used to pick candidates that are
 * then re-scored with the exact float kernel.
 *
 * The rotated query is quantised to int8 (scale qscale = 127 / max|q_i|) and the 16
 * centroids to uint8 (c8 = round(c * cscale) + 128, cscale = 127 / max|c|). For a code,
 *   sum_i c8[code_i] * q8_i - 128 * sum_i q8_i = sum_i round(c cscale)_i q8_i
 * is computed exactly in int32, so the result does not depend on summation order and
 * every implementation agrees bit for bit; dot ~= that / (qscale * cscale).
 *
 * Within each group of 64 coordinates the query is stored in the order in which the
 * kernel unpacks nibbles: the 32 low nibbles of the group's 32 bytes (coordinates
 * 0, 2, ..., 62), then the 32 high nibbles (1, 3, ..., 63). */
struct QueryI8 {
    std::vector<int8_t> q8; ///< d values, permuted within full 64-groups
    int32_t bias = 0;       ///< 128 * sum(q8)
    float inv_scale = 0;    ///< 1 / (qscale * cscale)
    uint8_t table[16];      ///< c8, the shifted 8-bit centroids
};

/// true when the CPU has the instructions of the integer fast path
bool fast_scan_i8_available();

/// prepare the 8-bit query for 4-bit codes of dimension d
void prepare_query_i8(const float* qrot, const float* centroids16, size_t d, QueryI8& out);

/// approximate code_dot for n 4-bit codes, stride bytes apart; out[v] in float
void code_dot_many_i8(
        const uint8_t* codes,
        size_t stride,
        size_t n,
        const QueryI8& q,
        size_t d,
        float* out);

/// the same for 4 queries at once: each code is unpacked once and scored against all
/// four (out[j][v] for query j); results equal four calls of code_dot_many_i8
void code_dot_many_i8_x4(
        const uint8_t* codes,
        size_t stride,
        size_t n,
        const QueryI8* const* q,
        size_t d,
        float* const* out);

} // namespace tq_kernels
} // namespace faiss
