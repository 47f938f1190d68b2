// Distance kernels on packed TurboQuant codes: one implementation per operation, shared
// by the flat index, the IVF scanner and the distance computers.
//
// code_dot computes sum_i q[i] * centroids[code_i] in one fixed order so that every
// implementation (portable scalar, AVX2) returns bit-identical results: coordinate i is
// accumulated with a fused multiply-add into lane i % 8, in increasing i, and the eight
// lanes are reduced as ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace faiss {
namespace tq_kernels {

/// load up to 8 bytes (little-endian) into a 64-bit word
inline uint64_t load_bytes(const uint8_t* p, size_t nbytes) {
    uint64_t w = 0;
    std::memcpy(&w, p, nbytes);
    return w;
}

inline float reduce_lanes(const float* l) {
    return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
}

/// portable scalar code_dot. Eight codes of NBITS bits occupy exactly NBITS bytes; full
/// groups are read as one 8-byte word, which is safe because a TurboQuant code is
/// followed by at least 8 bytes (its float factors).
template <int NBITS>
float code_dot_scalar(const uint8_t* code, const float* q, const float* centroids, size_t d) {
    constexpr uint64_t mask = (uint64_t(1) << NBITS) - 1;
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (size_t i = 0; i < d; i += 8) {
        size_t cnt = d - i < 8 ? d - i : 8;
        uint64_t w = cnt == 8 ? load_bytes(code, 8) : load_bytes(code, (cnt * NBITS + 7) / 8);
        code += NBITS;
        for (size_t j = 0; j < cnt; j++) {
            acc[j] = std::fma(q[i + j], centroids[(w >> (j * NBITS)) & mask], acc[j]);
        }
    }
    return reduce_lanes(acc);
}

/// sum of proj[k] over the set bits k of an m-bit sign vector
inline float sum_set_bits(const uint8_t* bits, const float* proj, size_t m) {
    float acc = 0;
    for (size_t byte = 0; byte * 8 < m; byte++) {
        unsigned b = bits[byte];
        while (b) {
            int t = __builtin_ctz(b);
            size_t k = byte * 8 + t;
            if (k < m) {
                acc += proj[k];
            }
            b &= b - 1;
        }
    }
    return acc;
}

typedef float (*code_dot_fn)(const uint8_t*, const float*, const float*, size_t);

/// SIMD level used by the kernels: 0 = portable scalar, 1 = AVX2 + FMA
int simd_level();
/// force a SIMD level (tests compare the paths); returns the level in effect
int set_simd_level(int level);

/// the code_dot implementation for a bit width (1..8) at the current SIMD level
code_dot_fn get_code_dot(int nbits);

/// unpack d codes of nbits bits into bytes
void unpack_codes(const uint8_t* code, size_t d, int nbits, uint8_t* out);
/// pack d byte codes into nbits-bit codes (code_bytes = ceil(d*nbits/8) bytes written)
void pack_codes(const uint8_t* in, size_t d, int nbits, uint8_t* code);

#if defined(__x86_64__)
code_dot_fn get_code_dot_avx2(int nbits);
#endif

} // namespace tq_kernels
} // namespace faiss
