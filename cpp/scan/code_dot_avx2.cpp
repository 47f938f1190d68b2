// AVX2 + FMA code_dot, compiled for that target only and chosen at run time.
#if defined(__x86_64__)

#include <immintrin.h>

#include <cstring>

#include "code_dot.h"

namespace faiss {
namespace tq_kernels {

namespace {

#define TQ_AVX2 __attribute__((target("avx2,fma")))

// eight NBITS-bit codes of a 64-bit word in eight 32-bit lanes: lanes 0-3 from the
// low 4*NBITS bits, lanes 4-7 from the next 4*NBITS bits (4*8 = 32 bits at most)
template <int NBITS>
TQ_AVX2 inline __m256i codes_to_lanes(uint64_t w) {
    const __m256i shifts = _mm256_setr_epi32(
            0, NBITS, 2 * NBITS, 3 * NBITS, 0, NBITS, 2 * NBITS, 3 * NBITS);
    const __m256i mask = _mm256_set1_epi32((1 << NBITS) - 1);
    uint32_t lo = uint32_t(w), hi = uint32_t(w >> (4 * NBITS));
    __m256i v = _mm256_setr_epi32(lo, lo, lo, lo, hi, hi, hi, hi);
    return _mm256_and_si256(_mm256_srlv_epi32(v, shifts), mask);
}

// centroids[idx] for eight lanes
template <int NBITS>
struct Lookup {
    const float* c;
    TQ_AVX2 explicit Lookup(const float* c) : c(c) {}
    TQ_AVX2 __m256 operator()(__m256i idx) const {
        return _mm256_i32gather_ps(c, idx, 4);
    }
};

// up to 8 centroids: one in-register permute
template <int NBITS>
struct LookupSmall {
    __m256 table;
    TQ_AVX2 explicit LookupSmall(const float* c) {
        float t[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int j = 0; j < (1 << NBITS); j++) {
            t[j] = c[j];
        }
        table = _mm256_loadu_ps(t);
    }
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

template <int NBITS, class LK>
TQ_AVX2 float code_dot_avx2(
        const uint8_t* code,
        const float* q,
        const float* centroids,
        size_t d) {
    const LK lookup(centroids);
    __m256 acc = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 8 <= d; i += 8) {
        uint64_t w;
        std::memcpy(&w, code, 8); // safe: codes are followed by >= 8 bytes of factors
        __m256i idx = codes_to_lanes<NBITS>(w);
        code += NBITS;
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), lookup(idx), acc);
    }
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, acc);
    if (i < d) { // tail in the scalar order of code_dot_scalar
        constexpr uint64_t mask = (uint64_t(1) << NBITS) - 1;
        size_t cnt = d - i;
        uint64_t w = load_bytes(code, (cnt * NBITS + 7) / 8);
        for (size_t j = 0; j < cnt; j++) {
            lanes[j] = std::fma(q[i + j], centroids[(w >> (j * NBITS)) & mask], lanes[j]);
        }
    }
    return reduce_lanes(lanes);
}

} // namespace

code_dot_fn get_code_dot_avx2(int nbits) {
    switch (nbits) {
        case 1: return code_dot_avx2<1, LookupSmall<1>>;
        case 2: return code_dot_avx2<2, LookupSmall<2>>;
        case 3: return code_dot_avx2<3, LookupSmall<3>>;
        case 4: return code_dot_avx2<4, Lookup16>;
        case 5: return code_dot_avx2<5, Lookup<5>>;
        case 6: return code_dot_avx2<6, Lookup<6>>;
        case 7: return code_dot_avx2<7, Lookup<7>>;
        case 8: return code_dot_avx2<8, Lookup<8>>;
    }
    return nullptr;
}

} // namespace tq_kernels
} // namespace faiss

#endif
