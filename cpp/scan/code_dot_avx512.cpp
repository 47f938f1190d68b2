// AVX-512 code_dot: 16 lanes = one group of 16 codes per iteration. Compiled for that
// target only and chosen at run time.
#if defined(__x86_64__)

#include "code_dot_simd.h"

namespace faiss {
namespace tq_kernels {

namespace {

#define TQ_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,bmi2")))

// up to 16 centroids: one in-register permute
template <int NBITS>
struct Lookup16 {
    __m512 table;
    TQ_AVX512 explicit Lookup16(const float* c) : table(_mm512_loadu_ps(c)) {}
    TQ_AVX512 __m512 operator()(__m512i idx) const {
        return _mm512_permutexvar_ps(idx, table);
    }
};

// 32 centroids: two-table permute
struct Lookup32 {
    __m512 lo, hi;
    TQ_AVX512 explicit Lookup32(const float* c)
            : lo(_mm512_loadu_ps(c)), hi(_mm512_loadu_ps(c + 16)) {}
    TQ_AVX512 __m512 operator()(__m512i idx) const {
        return _mm512_permutex2var_ps(lo, idx, hi);
    }
};

// 64 / 128 / 256 centroids held in registers: two-table permutes select within each block of
// 32 (index bits 0-4), then a tree of masked blends on bits 5, 6, 7 (no memory gathers)
template <int NBITS>
struct LookupTree {
    static constexpr int NB = (1 << NBITS) / 32; // blocks of 32 centroids: 2, 4 or 8
    __m512 t[2 * NB];
    TQ_AVX512 explicit LookupTree(const float* c) {
        for (int i = 0; i < 2 * NB; i++) {
            t[i] = _mm512_loadu_ps(c + 16 * i);
        }
    }
    TQ_AVX512 __m512 operator()(__m512i idx) const {
        __m512 v[NB];
        for (int j = 0; j < NB; j++) {
            v[j] = _mm512_permutex2var_ps(t[2 * j], idx, t[2 * j + 1]);
        }
        for (int bit = 5, n = NB; n > 1; bit++, n /= 2) {
            __mmask16 m = _mm512_test_epi32_mask(idx, _mm512_set1_epi32(1 << bit));
            for (int j = 0; j < n / 2; j++) {
                v[j] = _mm512_mask_blend_ps(m, v[2 * j], v[2 * j + 1]);
            }
        }
        return v[0];
    }
};

template <int NBITS, class LK>
TQ_AVX512 float code_dot_avx512(
        const uint8_t* code,
        const float* q,
        const float* centroids,
        size_t d) {
    const LK lookup(centroids);
    __m512 acc = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= d; i += 16, code += 2 * NBITS) {
        __m512i idx = _mm512_cvtepu8_epi32(codes16_to_bytes<NBITS>(code));
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), lookup(idx), acc);
    }
    alignas(64) float lanes[16];
    _mm512_store_ps(lanes, acc);
    code_dot_tail<NBITS>(code, q + i, centroids, d - i, lanes);
    return reduce_lanes16(lanes);
}

/// code_dot of n codes (stride bytes apart): four independent FMA chains at a time
/// hide the FMA latency that bounds a single chain; each code keeps the canonical order
template <int NBITS, class LK>
TQ_AVX512 void code_dot_many_avx512(
        const uint8_t* codes,
        size_t stride,
        size_t n,
        const float* q,
        const float* centroids,
        size_t d,
        float* out) {
    const LK lookup(centroids);
    size_t v = 0;
    for (; v + 4 <= n; v += 4) {
        const uint8_t* c = codes + v * stride;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        size_t i = 0, off = 0;
        for (; i + 16 <= d; i += 16, off += 2 * NBITS) {
            __m512 qv = _mm512_loadu_ps(q + i);
            a0 = _mm512_fmadd_ps(
                    qv, lookup(_mm512_cvtepu8_epi32(codes16_to_bytes<NBITS>(c + off))), a0);
            a1 = _mm512_fmadd_ps(
                    qv,
                    lookup(_mm512_cvtepu8_epi32(codes16_to_bytes<NBITS>(c + stride + off))),
                    a1);
            a2 = _mm512_fmadd_ps(
                    qv,
                    lookup(_mm512_cvtepu8_epi32(
                            codes16_to_bytes<NBITS>(c + 2 * stride + off))),
                    a2);
            a3 = _mm512_fmadd_ps(
                    qv,
                    lookup(_mm512_cvtepu8_epi32(
                            codes16_to_bytes<NBITS>(c + 3 * stride + off))),
                    a3);
        }
        alignas(64) float lanes[4][16];
        _mm512_store_ps(lanes[0], a0);
        _mm512_store_ps(lanes[1], a1);
        _mm512_store_ps(lanes[2], a2);
        _mm512_store_ps(lanes[3], a3);
        for (int j = 0; j < 4; j++) {
            code_dot_tail<NBITS>(c + j * stride + off, q + i, centroids, d - i, lanes[j]);
            out[v + j] = reduce_lanes16(lanes[j]);
        }
    }
    for (; v < n; v++) {
        out[v] = code_dot_avx512<NBITS, LK>(codes + v * stride, q, centroids, d);
    }
}

} // namespace

/// QJL sums: 16 sign bits are directly a lane mask for a masked add
TQ_AVX512 float sum_set_bits_avx512(const uint8_t* bits, const float* proj, size_t m) {
    __m512 acc = _mm512_setzero_ps();
    size_t k = 0;
    for (; k + 16 <= m; k += 16) {
        uint16_t w;
        std::memcpy(&w, bits + k / 8, 2);
        acc = _mm512_mask_add_ps(acc, __mmask16(w), acc, _mm512_loadu_ps(proj + k));
    }
    alignas(64) float lanes[16];
    _mm512_store_ps(lanes, acc);
    sum_set_bits_tail(bits, proj, k, m, lanes);
    return reduce_lanes16(lanes);
}

code_dot_many_fn get_code_dot_many_avx512(int nbits) {
    switch (nbits) {
        case 1: return code_dot_many_avx512<1, Lookup16<1>>;
        case 2: return code_dot_many_avx512<2, Lookup16<2>>;
        case 3: return code_dot_many_avx512<3, Lookup16<3>>;
        case 4: return code_dot_many_avx512<4, Lookup16<4>>;
        case 5: return code_dot_many_avx512<5, Lookup32>;
        case 6: return code_dot_many_avx512<6, LookupTree<6>>;
        case 7: return code_dot_many_avx512<7, LookupTree<7>>;
        case 8: return code_dot_many_avx512<8, LookupTree<8>>;
    }
    return nullptr;
}

code_dot_fn get_code_dot_avx512(int nbits) {
    switch (nbits) {
        case 1: return code_dot_avx512<1, Lookup16<1>>;
        case 2: return code_dot_avx512<2, Lookup16<2>>;
        case 3: return code_dot_avx512<3, Lookup16<3>>;
        case 4: return code_dot_avx512<4, Lookup16<4>>;
        case 5: return code_dot_avx512<5, Lookup32>;
        case 6: return code_dot_avx512<6, LookupTree<6>>;
        case 7: return code_dot_avx512<7, LookupTree<7>>;
        case 8: return code_dot_avx512<8, LookupTree<8>>;
    }
    return nullptr;
}

} // namespace tq_kernels
} // namespace faiss

#endif
