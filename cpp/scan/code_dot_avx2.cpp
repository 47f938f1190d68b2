// AVX2 + FMA code_dot, compiled for that target only and chosen at run time.
#if defined(__x86_64__)

#include "code_dot_simd.h"

namespace faiss {
namespace tq_kernels {

namespace {

#define TQ_AVX2 __attribute__((target("avx2,fma,bmi2")))

// centroids[idx] for eight lanes: gather (any width)
struct LookupGather {
    const float* c;
    TQ_AVX2 explicit LookupGather(const float* c) : c(c) {}
    TQ_AVX2 __m256 operator()(__m256i idx) const {
        return _mm256_i32gather_ps(c, idx, 4);
    }
};

// up to 8 centroids: one in-register permute
template <int NBITS>
struct LookupSmall {
    __m256 table;
    TQ_AVX2 explicit LookupSmall(const float* c) : table(_mm256_loadu_ps(c)) {}
    TQ_AVX2 __m256 operator()(__m256i idx) const {
        return _mm256_permutevar8x32_ps(table, idx);
    }
};

// 16 centroids: two permutes and a blend on bit 3
struct Lookup16 {
    __m256 lo, hi;
    TQ_AVX2 explicit Lookup16(const float* c)
            : lo(_mm256_loadu_ps(c)), hi(_mm256_loadu_ps(c + 8)) {}
    TQ_AVX2 __m256 operator()(__m256i idx) const {
        __m256 a = _mm256_permutevar8x32_ps(lo, idx);
        __m256 b = _mm256_permutevar8x32_ps(hi, idx);
        __m256 sel = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));
        return _mm256_blendv_ps(a, b, sel);
    }
};

// lanes 0-7 of the canonical order in acc0, lanes 8-15 in acc1
template <int NBITS, class LK>
TQ_AVX2 float code_dot_avx2(
        const uint8_t* code,
        const float* q,
        const float* centroids,
        size_t d) {
    const LK lookup(centroids);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= d; i += 16, code += 2 * NBITS) {
        __m128i bytes = codes16_to_bytes<NBITS>(code);
        __m256i idx0 = _mm256_cvtepu8_epi32(bytes);
        __m256i idx1 = _mm256_cvtepu8_epi32(_mm_unpackhi_epi64(bytes, bytes));
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), lookup(idx0), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), lookup(idx1), acc1);
    }
    alignas(32) float lanes[16];
    _mm256_store_ps(lanes, acc0);
    _mm256_store_ps(lanes + 8, acc1);
    code_dot_tail<NBITS>(code, q + i, centroids, d - i, lanes);
    return reduce_lanes16(lanes);
}

/// code_dot of n codes: two codes at a time (4 independent FMA chains)
template <int NBITS, class LK>
TQ_AVX2 void code_dot_many_avx2(
        const uint8_t* codes,
        size_t stride,
        size_t n,
        const float* q,
        const float* centroids,
        size_t d,
        float* out) {
    const LK lookup(centroids);
    size_t v = 0;
    for (; v + 2 <= n; v += 2) {
        const uint8_t* c = codes + v * stride;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, b0 = a0, b1 = a0;
        size_t i = 0, off = 0;
        for (; i + 16 <= d; i += 16, off += 2 * NBITS) {
            __m256 q0 = _mm256_loadu_ps(q + i), q1 = _mm256_loadu_ps(q + i + 8);
            __m128i ba = codes16_to_bytes<NBITS>(c + off);
            __m128i bb = codes16_to_bytes<NBITS>(c + stride + off);
            a0 = _mm256_fmadd_ps(q0, lookup(_mm256_cvtepu8_epi32(ba)), a0);
            a1 = _mm256_fmadd_ps(
                    q1, lookup(_mm256_cvtepu8_epi32(_mm_unpackhi_epi64(ba, ba))), a1);
            b0 = _mm256_fmadd_ps(q0, lookup(_mm256_cvtepu8_epi32(bb)), b0);
            b1 = _mm256_fmadd_ps(
                    q1, lookup(_mm256_cvtepu8_epi32(_mm_unpackhi_epi64(bb, bb))), b1);
        }
        alignas(32) float lanes[2][16];
        _mm256_store_ps(lanes[0], a0);
        _mm256_store_ps(lanes[0] + 8, a1);
        _mm256_store_ps(lanes[1], b0);
        _mm256_store_ps(lanes[1] + 8, b1);
        for (int j = 0; j < 2; j++) {
            code_dot_tail<NBITS>(c + j * stride + off, q + i, centroids, d - i, lanes[j]);
            out[v + j] = reduce_lanes16(lanes[j]);
        }
    }
    for (; v < n; v++) {
        out[v] = code_dot_avx2<NBITS, LK>(codes + v * stride, q, centroids, d);
    }
}

/// lanes whose bit is set in the byte: broadcast, and with one bit per lane, compare
TQ_AVX2 inline __m256 byte_mask(uint8_t byte) {
    const __m256i lane_bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    __m256i b = _mm256_and_si256(_mm256_set1_epi32(byte), lane_bits);
    return _mm256_castsi256_ps(_mm256_cmpeq_epi32(b, lane_bits));
}

} // namespace

/// QJL sums, lanes 0-7 and 8-15 of the canonical order in two accumulators
TQ_AVX2 float sum_set_bits_avx2(const uint8_t* bits, const float* proj, size_t m) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    size_t k = 0;
    for (; k + 16 <= m; k += 16) {
        a0 = _mm256_add_ps(a0, _mm256_and_ps(byte_mask(bits[k / 8]), _mm256_loadu_ps(proj + k)));
        a1 = _mm256_add_ps(
                a1, _mm256_and_ps(byte_mask(bits[k / 8 + 1]), _mm256_loadu_ps(proj + k + 8)));
    }
    alignas(32) float lanes[16];
    _mm256_store_ps(lanes, a0);
    _mm256_store_ps(lanes + 8, a1);
    sum_set_bits_tail(bits, proj, k, m, lanes);
    return reduce_lanes16(lanes);
}

code_dot_many_fn get_code_dot_many_avx2(int nbits) {
    switch (nbits) {
        case 1: return code_dot_many_avx2<1, LookupSmall<1>>;
        case 2: return code_dot_many_avx2<2, LookupSmall<2>>;
        case 3: return code_dot_many_avx2<3, LookupSmall<3>>;
        case 4: return code_dot_many_avx2<4, Lookup16>;
        case 5: return code_dot_many_avx2<5, LookupGather>;
        case 6: return code_dot_many_avx2<6, LookupGather>;
        case 7: return code_dot_many_avx2<7, LookupGather>;
        case 8: return code_dot_many_avx2<8, LookupGather>;
    }
    return nullptr;
}

code_dot_fn get_code_dot_avx2(int nbits) {
    switch (nbits) {
        case 1: return code_dot_avx2<1, LookupSmall<1>>;
        case 2: return code_dot_avx2<2, LookupSmall<2>>;
        case 3: return code_dot_avx2<3, LookupSmall<3>>;
        case 4: return code_dot_avx2<4, Lookup16>;
        case 5: return code_dot_avx2<5, LookupGather>;
        case 6: return code_dot_avx2<6, LookupGather>;
        case 7: return code_dot_avx2<7, LookupGather>;
        case 8: return code_dot_avx2<8, LookupGather>;
    }
    return nullptr;
}

} // namespace tq_kernels
} // namespace faiss

#endif
