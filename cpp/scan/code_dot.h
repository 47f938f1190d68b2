// Distance kernels on packed TurboQuant codes: one implementation per operation, shared
// by the flat index, the IVF scanner and the distance computers.
//
// code_dot computes sum_i q[i] * centroids[code_i] in one fixed order so that every
// implementation (portable scalar, AVX2, AVX-512) returns bit-identical results:
// coordinate i is accumulated with a fused multiply-add into lane i % 16, in increasing
// i; lanes are folded as l[j] + l[j + 8] and the eight sums reduced as
// ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)).
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

/// reduction of the 16 lanes in the canonical order
inline float reduce_lanes16(const float* l) {
    float f[8];
    for (int j = 0; j < 8; j++) {
        f[j] = l[j] + l[j + 8];
    }
    return ((f[0] + f[4]) + (f[2] + f[6])) + ((f[1] + f[5]) + (f[3] + f[7]));
}

/// the coordinates after the last full group of 16, into lanes 0.., in scalar order.
/// `code` points at the first code of the tail.
template <int NBITS>
inline void code_dot_tail(
        const uint8_t* code,
        const float* q,
        const float* centroids,
        size_t rest,
        float* lanes) {
    constexpr uint64_t mask = (uint64_t(1) << NBITS) - 1;
    for (size_t j0 = 0; j0 < rest; j0 += 8) { // 8 codes = NBITS bytes
        size_t cnt = rest - j0 < 8 ? rest - j0 : 8;
        uint64_t w = load_bytes(code + (j0 / 8) * NBITS, (cnt * NBITS + 7) / 8);
        for (size_t j = 0; j < cnt; j++) {
            lanes[j0 + j] = std::fma(
                    q[j0 + j], centroids[(w >> (j * NBITS)) & mask], lanes[j0 + j]);
        }
    }
}

/// portable scalar code_dot (16 codes of NBITS bits occupy 2 * NBITS bytes)
template <int NBITS>
float code_dot_scalar(const uint8_t* code, const float* q, const float* centroids, size_t d) {
    constexpr uint64_t mask = (uint64_t(1) << NBITS) - 1;
    float lanes[16] = {0};
    size_t i = 0;
    for (; i + 16 <= d; i += 16, code += 2 * NBITS) {
        for (int half = 0; half < 2; half++) {
            uint64_t w = load_bytes(code + half * NBITS, NBITS);
            for (int j = 0; j < 8; j++) {
                int l = half * 8 + j;
                lanes[l] = std::fma(q[i + l], centroids[(w >> (j * NBITS)) & mask], lanes[l]);
            }
        }
    }
    code_dot_tail<NBITS>(code, q + i, centroids, d - i, lanes);
    return reduce_lanes16(lanes);
}

/// sum of proj[k] over the set bits k of an m-bit sign vector, in the canonical order:
/// proj[k] goes to lane k % 16 in increasing k, lanes reduced by reduce_lanes16
/// add proj[k] for the set bits k in [from, m) to lanes[k % 16] (scalar part of every
/// implementation)
inline void sum_set_bits_tail(
        const uint8_t* bits,
        const float* proj,
        size_t from,
        size_t m,
        float* lanes) {
    for (size_t k = from; k < m; k++) {
        if ((bits[k >> 3] >> (k & 7)) & 1) {
            lanes[k % 16] += proj[k];
        }
    }
}

inline float sum_set_bits_scalar(const uint8_t* bits, const float* proj, size_t m) {
    float lanes[16] = {0};
    sum_set_bits_tail(bits, proj, 0, m, lanes);
    return reduce_lanes16(lanes);
}

typedef float (*sum_set_bits_fn)(const uint8_t*, const float*, size_t);
/// the sum_set_bits implementation at the current SIMD level (bit-identical to scalar)
sum_set_bits_fn get_sum_set_bits();

/// code_dot(code, q, centroids, d): `centroids` must be readable for
/// max(2^nbits, kCentroidTablePad) floats (the SIMD kernels load whole tables)
typedef float (*code_dot_fn)(const uint8_t*, const float*, const float*, size_t);
constexpr size_t kCentroidTablePad = 32;

/// code_dot_many(codes, stride, n, q, centroids, d, out): out[v] = code_dot of the code
/// at codes + v * stride, bit-identical to code_dot, several codes in flight at once
typedef void (*code_dot_many_fn)(
        const uint8_t*, size_t, size_t, const float*, const float*, size_t, float*);

template <int NBITS>
void code_dot_many_scalar(
        const uint8_t* codes,
        size_t stride,
        size_t n,
        const float* q,
        const float* centroids,
        size_t d,
        float* out) {
    for (size_t v = 0; v < n; v++) {
        out[v] = code_dot_scalar<NBITS>(codes + v * stride, q, centroids, d);
    }
}

/// SIMD level used by the kernels: 0 = portable scalar, 1 = AVX2 + FMA + BMI2,
/// 2 = AVX-512 (F, BW, VL) + BMI2
int simd_level();
/// force a SIMD level (tests compare the paths); returns the level in effect
int set_simd_level(int level);

/// the code_dot implementation for a bit width (1..8) at the current SIMD level
code_dot_fn get_code_dot(int nbits);

/// the code_dot_many implementation for a bit width at the current SIMD level
code_dot_many_fn get_code_dot_many(int nbits);

/// unpack d codes of nbits bits into bytes
void unpack_codes(const uint8_t* code, size_t d, int nbits, uint8_t* out);
/// pack d byte codes into nbits-bit codes (code_bytes = ceil(d*nbits/8) bytes written)
void pack_codes(const uint8_t* in, size_t d, int nbits, uint8_t* code);

#if defined(__x86_64__)
code_dot_fn get_code_dot_avx2(int nbits);
code_dot_fn get_code_dot_avx512(int nbits);
code_dot_many_fn get_code_dot_many_avx2(int nbits);
code_dot_many_fn get_code_dot_many_avx512(int nbits);
float sum_set_bits_avx2(const uint8_t* bits, const float* proj, size_t m);
float sum_set_bits_avx512(const uint8_t* bits, const float* proj, size_t m);
#endif

} // namespace tq_kernels
} // namespace faiss
