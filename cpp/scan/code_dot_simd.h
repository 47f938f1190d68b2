// Pieces shared by the AVX2 and AVX-512 code_dot kernels (included by their .cpp files,
// each compiled for its own target through function attributes).
#pragma once

#include <immintrin.h>

#include <cstring>

#include "code_dot.h"

namespace faiss {
namespace tq_kernels {

/* The 16 NBITS-bit codes of one group (2 * NBITS bytes) as 16 bytes. Codes 8..15 start at
 * byte NBITS, so two 8-byte loads and two bit deposits (pdep) spread any width 1..8 to
 * one code per byte. The loads may read past the group: safe, TurboQuant codes are
 * followed by at least 8 bytes (their float factors). */
template <int NBITS>
__attribute__((target("bmi2,sse4.1"))) inline __m128i codes16_to_bytes(const uint8_t* code) {
    constexpr uint64_t lane_mask = 0x0101010101010101ULL * ((1u << NBITS) - 1);
    uint64_t w0, w1;
    std::memcpy(&w0, code, 8);
    std::memcpy(&w1, code + NBITS, 8);
    if (NBITS == 8) {
        return _mm_set_epi64x(int64_t(w1), int64_t(w0));
    }
    return _mm_set_epi64x(int64_t(_pdep_u64(w1, lane_mask)), int64_t(_pdep_u64(w0, lane_mask)));
}

} // namespace tq_kernels
} // namespace faiss
