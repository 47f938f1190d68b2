#include "TurboQuantizer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <faiss/impl/FaissAssert.h>

#include "scan/code_dot.h"

namespace faiss {

namespace {

// independent seeds for the QJL rotations, derived from the codec seed
uint64_t derived_seed(uint64_t seed, uint64_t j) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ULL * (j + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

inline void store_float(uint8_t* p, float v) {
    std::memcpy(p, &v, sizeof(float));
}
inline float load_float(const uint8_t* p) {
    float v;
    std::memcpy(&v, p, sizeof(float));
    return v;
}

} // namespace

TurboQuantizer::TurboQuantizer(size_t d, int nbits, size_t qjl_m, uint64_t seed)
        : d(d), nbits(nbits), qjl_m(qjl_m), seed(seed) {
    init();
}

void TurboQuantizer::init() {
    FAISS_THROW_IF_NOT_MSG(d >= 1, "TurboQuant: dimension must be >= 1");
    FAISS_THROW_IF_NOT_FMT(
            d <= (1 << 20), "TurboQuant: dimension %zd is too large", d);
    FAISS_THROW_IF_NOT_FMT(
            nbits >= 1 && nbits <= 8, "TurboQuant: nbits=%d must be in 1..8", nbits);
    FAISS_THROW_IF_NOT_FMT(
            qjl_m <= 16 * d,
            "TurboQuant: qjl_m=%zd must be <= 16 * d",
            qjl_m);
    FAISS_THROW_IF_NOT_FMT(
            correction >= TQ_CORRECTION_PLAIN && correction <= TQ_CORRECTION_LSQ,
            "TurboQuant: unknown correction %d",
            correction);
    FAISS_THROW_IF_NOT_FMT(
            scale_search >= 1 && scale_search <= 9,
            "TurboQuant: scale_search=%d must be in 1..9",
            scale_search);
    codebook = LloydMaxCodebook(d, nbits);
    centroid_table = codebook.centroids;
    centroid_table.resize(
            std::max(codebook.centroids.size(), tq_kernels::kCentroidTablePad), 0.0f);
    rotation = TQRotation(d, rotation_kind, rotation_rounds, seed);
    qjl_rotations.clear();
    for (size_t j = 0; j * d < qjl_m; j++) {
        qjl_rotations.emplace_back(
                d, TQRotation::STRUCTURED, rotation_rounds, derived_seed(seed, j));
    }
    mse_bytes = (d * nbits + 7) / 8;
    qjl_bytes = (qjl_m + 7) / 8;
    code_size = mse_bytes + qjl_bytes + sizeof(float) * (qjl_m > 0 ? 3 : 2);
    if (qjl_m > 0) {
        // E|s_1| for s uniform on the unit sphere of R^d
        double e_abs = std::exp(std::lgamma(d / 2.0) - std::lgamma((d + 1) / 2.0)) /
                std::sqrt(M_PI);
        qjl_scale = 1.0 / (double(qjl_m) * e_abs);
    } else {
        qjl_scale = 0;
    }
}

namespace {

// number of non-finite values in x[0..n): exponent bits all set, counted without branches
// so that the loop vectorises (std::isfinite with an early exit does not)
__attribute__((target_clones("avx512f", "avx2", "default"))) size_t count_non_finite(
        const float* x,
        size_t n) {
    uint32_t bad = 0;
    for (size_t j = 0; j < n; j++) {
        uint32_t u;
        std::memcpy(&u, x + j, 4);
        bad += (u & 0x7f800000u) == 0x7f800000u;
    }
    return bad;
}

} // namespace

void TurboQuantizer::check_finite(size_t n, const float* x, const char* what) const {
    size_t bad = size_t(-1);
#pragma omp parallel for if (n * d > 100000) reduction(min : bad)
    for (int64_t i = 0; i < int64_t(n); i++) {
        if (count_non_finite(x + size_t(i) * d, d) != 0) {
            bad = std::min(bad, size_t(i));
        }
    }
    FAISS_THROW_IF_NOT_FMT(
            bad == size_t(-1),
            "TurboQuant: %s vector %zd contains NaN or inf",
            what,
            bad);
}

namespace {

/* Quantisation of one SoA block (8 vectors, d rows) at grid scales t (one per lane):
 * u = y * inv per lane, code = #{j : boundary_j < u * t} (float32 products), codes stored C[i * 8 + lane];
 * per lane uc = sum u * centroid and cc = sum centroid^2 in float64, u unscaled (so
 * uc / sqrt(cc) is the cosine criterion of the scale search). The documented order of
 * the sums: two partial sums per lane, over the even and over the odd rows, each in
 * increasing i, then even + odd (two chains: the scale search runs this several times per
 * vector and one chain of d dependent adds would bound it). The reference does the same. */
typedef void (*quantize_block_fn)(
        const float* Y,
        const float* inv,
        const float* t,
        size_t d,
        const float* bnd,
        const float* cen,
        uint8_t* C,
        double* uc,
        double* cc);

template <int K>
void quantize_block_scalar(
        const float* Y,
        const float* inv,
        const float* t,
        size_t d,
        const float* bnd,
        const float* cen,
        uint8_t* C,
        double* uc,
        double* cc) {
    double ucp[2][8] = {}, ccp[2][8] = {};
    for (size_t i = 0; i < d; i++) {
        for (int l = 0; l < 8; l++) {
            const float u = Y[i * 8 + l] * inv[l], ut = u * t[l];
            int c = 0; // branchless descent
            for (int s = K / 2; s >= 1; s /= 2) {
                c += bnd[c + s - 1] < ut ? s : 0;
            }
            C[i * 8 + l] = uint8_t(c);
            ucp[i % 2][l] += double(u) * double(cen[c]);
            ccp[i % 2][l] += double(cen[c]) * double(cen[c]);
        }
    }
    for (int l = 0; l < 8; l++) {
        uc[l] = ucp[0][l] + ucp[1][l];
        cc[l] = ccp[0][l] + ccp[1][l];
    }
}

#if defined(__x86_64__)
/* AVX2, one row (8 lanes) per step: the code is the count of boundaries below u * t (the
 * same number as the descent: the boundaries increase), the centroid a two-register
 * lookup; rows alternate between the even and the odd float64 sums. */
template <int K>
__attribute__((target("avx2"))) void quantize_block_avx2(
        const float* Y,
        const float* inv,
        const float* t,
        size_t d,
        const float* bnd,
        const float* cen,
        uint8_t* C,
        double* uc,
        double* cc) {
    float table[16] = {0};
    for (int j = 0; j < K; j++) {
        table[j] = cen[j];
    }
    const __m256 tlo = _mm256_loadu_ps(table), thi = _mm256_loadu_ps(table + 8);
    const __m256 invv = _mm256_loadu_ps(inv), tv = _mm256_loadu_ps(t);
    // [parity][lanes 0-3 / 4-7], named so that they stay in registers
    __m256d uc00 = _mm256_setzero_pd(), uc01 = _mm256_setzero_pd();
    __m256d uc10 = _mm256_setzero_pd(), uc11 = _mm256_setzero_pd();
    __m256d cc00 = _mm256_setzero_pd(), cc01 = _mm256_setzero_pd();
    __m256d cc10 = _mm256_setzero_pd(), cc11 = _mm256_setzero_pd();
    for (size_t i = 0; i < d; i++) {
        const __m256 u = _mm256_mul_ps(_mm256_loadu_ps(Y + i * 8), invv);
        const __m256 ut = _mm256_mul_ps(u, tv);
        __m256i c = _mm256_setzero_si256();
        for (int j = 0; j + 1 < K; j++) {
            c = _mm256_sub_epi32(
                    c,
                    _mm256_castps_si256(
                            _mm256_cmp_ps(_mm256_set1_ps(bnd[j]), ut, _CMP_LT_OQ)));
        }
        const __m256 cv = _mm256_blendv_ps(
                _mm256_permutevar8x32_ps(tlo, c),
                _mm256_permutevar8x32_ps(thi, c),
                _mm256_castsi256_ps(_mm256_slli_epi32(c, 28)));
        const __m128i c16 = _mm_packus_epi32(
                _mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
        _mm_storel_epi64((__m128i*)(C + i * 8), _mm_packus_epi16(c16, c16));
        const __m256d u0 = _mm256_cvtps_pd(_mm256_castps256_ps128(u));
        const __m256d u1 = _mm256_cvtps_pd(_mm256_extractf128_ps(u, 1));
        const __m256d c0 = _mm256_cvtps_pd(_mm256_castps256_ps128(cv));
        const __m256d c1 = _mm256_cvtps_pd(_mm256_extractf128_ps(cv, 1));
        if (i % 2 == 0) {
            uc00 = _mm256_add_pd(uc00, _mm256_mul_pd(u0, c0));
            uc01 = _mm256_add_pd(uc01, _mm256_mul_pd(u1, c1));
            cc00 = _mm256_add_pd(cc00, _mm256_mul_pd(c0, c0));
            cc01 = _mm256_add_pd(cc01, _mm256_mul_pd(c1, c1));
        } else {
            uc10 = _mm256_add_pd(uc10, _mm256_mul_pd(u0, c0));
            uc11 = _mm256_add_pd(uc11, _mm256_mul_pd(u1, c1));
            cc10 = _mm256_add_pd(cc10, _mm256_mul_pd(c0, c0));
            cc11 = _mm256_add_pd(cc11, _mm256_mul_pd(c1, c1));
        }
    }
    _mm256_storeu_pd(uc, _mm256_add_pd(uc00, uc10));
    _mm256_storeu_pd(uc + 4, _mm256_add_pd(uc01, uc11));
    _mm256_storeu_pd(cc, _mm256_add_pd(cc00, cc10));
    _mm256_storeu_pd(cc + 4, _mm256_add_pd(cc01, cc11));
}
#endif

#if defined(__x86_64__)
/// the lower (h = 0) or upper (h = 1) 8 floats (AVX-512F only, no DQ)
__attribute__((target("avx512f"), always_inline)) inline __m256 half8(__m512 v, int h) {
    return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), h));
}

/// the 8 per-lane floats at p in both halves (two rows of an SoA block at once)
__attribute__((target("avx512f"), always_inline)) inline __m512 twice8(const float* p) {
    const __m256d h = _mm256_castps_pd(_mm256_loadu_ps(p));
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(h), h, 1));
}

/// codes of 16 values: the branchless descent of the scalar version, boundaries in a register
template <int K>
__attribute__((target("avx512f,avx512bw,avx512vl"), always_inline)) inline __m512i
descend16(__m512 ut, __m512 bt) {
    __m512i c = _mm512_setzero_si512();
    for (int s = K / 2; s >= 1; s /= 2) {
        const __m512 b = _mm512_permutexvar_ps(_mm512_add_epi32(c, _mm512_set1_epi32(s - 1)), bt);
        c = _mm512_mask_add_epi32(c, _mm512_cmp_ps_mask(b, ut, _CMP_LT_OQ), c, _mm512_set1_epi32(s));
    }
    return c;
}

/// the float64 sums of two rows: row 0 into the even chains, row 1 (if any) into the odd
__attribute__((target("avx512f"), always_inline)) inline void accumulate_rows(
        __m512 u,
        __m512 cv,
        bool pair,
        __m512d& uc_even,
        __m512d& cc_even,
        __m512d& uc_odd,
        __m512d& cc_odd) {
    const __m512d u0 = _mm512_cvtps_pd(half8(u, 0)), c0 = _mm512_cvtps_pd(half8(cv, 0));
    uc_even = _mm512_add_pd(uc_even, _mm512_mul_pd(u0, c0));
    cc_even = _mm512_add_pd(cc_even, _mm512_mul_pd(c0, c0));
    if (pair) {
        const __m512d u1 = _mm512_cvtps_pd(half8(u, 1)), c1 = _mm512_cvtps_pd(half8(cv, 1));
        uc_odd = _mm512_add_pd(uc_odd, _mm512_mul_pd(u1, c1));
        cc_odd = _mm512_add_pd(cc_odd, _mm512_mul_pd(c1, c1));
    }
}

/* Two rows (16 values) per register: the same codes as the scalar descent (boundaries and
 * centroids held in one register each); row i goes to the even partial sums, row i + 1 to
 * the odd ones. Eight rows per step: the descent is a chain of dependent permutes and
 * compares, and four independent chains side by side keep the pipes busy (one at a time
 * is latency-bound at ~3x the cost). */
template <int K>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void quantize_block_avx512(
        const float* Y,
        const float* inv,
        const float* t,
        size_t d,
        const float* bnd,
        const float* cen,
        uint8_t* C,
        double* uc,
        double* cc) {
    float btab[16] = {0}, ctab[16] = {0};
    for (int j = 0; j < K; j++) {
        ctab[j] = cen[j];
        if (j + 1 < K) {
            btab[j] = bnd[j];
        }
    }
    const __m512 bt = _mm512_loadu_ps(btab), ct = _mm512_loadu_ps(ctab);
    const __m512 invv = twice8(inv), tv = twice8(t);
    // named accumulators: an array would live on the stack and put a store-to-load
    // forwarding into every add of the chains
    __m512d uc_even = _mm512_setzero_pd(), uc_odd = _mm512_setzero_pd();
    __m512d cc_even = _mm512_setzero_pd(), cc_odd = _mm512_setzero_pd();
    size_t i = 0;
    for (; i + 8 <= d; i += 8) {
        const __m512 u0 = _mm512_mul_ps(_mm512_loadu_ps(Y + i * 8), invv);
        const __m512 u1 = _mm512_mul_ps(_mm512_loadu_ps(Y + i * 8 + 16), invv);
        const __m512 u2 = _mm512_mul_ps(_mm512_loadu_ps(Y + i * 8 + 32), invv);
        const __m512 u3 = _mm512_mul_ps(_mm512_loadu_ps(Y + i * 8 + 48), invv);
        const __m512i c0 = descend16<K>(_mm512_mul_ps(u0, tv), bt);
        const __m512i c1 = descend16<K>(_mm512_mul_ps(u1, tv), bt);
        const __m512i c2 = descend16<K>(_mm512_mul_ps(u2, tv), bt);
        const __m512i c3 = descend16<K>(_mm512_mul_ps(u3, tv), bt);
        _mm_storeu_si128((__m128i*)(C + i * 8), _mm512_cvtepi32_epi8(c0));
        _mm_storeu_si128((__m128i*)(C + i * 8 + 16), _mm512_cvtepi32_epi8(c1));
        _mm_storeu_si128((__m128i*)(C + i * 8 + 32), _mm512_cvtepi32_epi8(c2));
        _mm_storeu_si128((__m128i*)(C + i * 8 + 48), _mm512_cvtepi32_epi8(c3));
        accumulate_rows(u0, _mm512_permutexvar_ps(c0, ct), true, uc_even, cc_even, uc_odd, cc_odd);
        accumulate_rows(u1, _mm512_permutexvar_ps(c1, ct), true, uc_even, cc_even, uc_odd, cc_odd);
        accumulate_rows(u2, _mm512_permutexvar_ps(c2, ct), true, uc_even, cc_even, uc_odd, cc_odd);
        accumulate_rows(u3, _mm512_permutexvar_ps(c3, ct), true, uc_even, cc_even, uc_odd, cc_odd);
    }
    for (; i < d; i += 2) {
        const bool pair = i + 1 < d;
        const __mmask16 m = pair ? __mmask16(0xFFFF) : __mmask16(0x00FF);
        const __m512 u = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, Y + i * 8), invv);
        const __m512i c = descend16<K>(_mm512_mul_ps(u, tv), bt);
        _mm_mask_storeu_epi8(C + i * 8, m, _mm512_cvtepi32_epi8(c));
        accumulate_rows(u, _mm512_permutexvar_ps(c, ct), pair, uc_even, cc_even, uc_odd, cc_odd);
    }
    _mm512_storeu_pd(uc, _mm512_add_pd(uc_even, uc_odd));
    _mm512_storeu_pd(cc, _mm512_add_pd(cc_even, cc_odd));
}
#endif

template <int K>
quantize_block_fn quantize_block_for_level() {
#if defined(__x86_64__)
    if (tq_kernels::simd_level() >= 2) {
        return quantize_block_avx512<K>;
    }
    if (tq_kernels::simd_level() >= 1) {
        return quantize_block_avx2<K>;
    }
#endif
    return quantize_block_scalar<K>;
}

/// AVX-512 / AVX2 for up to 16 cells (boundaries and centroids in registers), the scalar
/// descent otherwise (all give the same codes and sums)
quantize_block_fn get_quantize_block(int K) {
    switch (K) {
        case 2: return quantize_block_for_level<2>();
        case 4: return quantize_block_for_level<4>();
        case 8: return quantize_block_for_level<8>();
        case 16: return quantize_block_for_level<16>();
        case 32: return quantize_block_scalar<32>;
        case 64: return quantize_block_scalar<64>;
        case 128: return quantize_block_scalar<128>;
        default: return quantize_block_scalar<256>;
    }
}

/// X[i * 8 + l] = x[l * d + i] for the nv <= 8 vectors of a block (padding lanes zero)
void transpose_in8_scalar(const float* x, size_t d, size_t nv, float* X) {
    for (size_t i = 0; i < d; i++) {
        for (size_t l = 0; l < 8; l++) {
            X[i * 8 + l] = l < nv ? x[l * d + i] : 0.0f;
        }
    }
}

#if defined(__x86_64__)
/// full blocks with AVX2 8 x 8 transposes (the scalar gather loop was a tenth of encode)
__attribute__((target("avx2"))) void transpose_in8_avx2(
        const float* x,
        size_t d,
        size_t nv,
        float* X) {
    if (nv < 8) {
        transpose_in8_scalar(x, d, nv, X);
        return;
    }
    size_t i = 0;
    for (; i + 8 <= d; i += 8) {
        __m256 r[8], t[8];
        for (int l = 0; l < 8; l++) {
            r[l] = _mm256_loadu_ps(x + l * d + i);
        }
        for (int l = 0; l < 8; l += 2) {
            t[l] = _mm256_unpacklo_ps(r[l], r[l + 1]);
            t[l + 1] = _mm256_unpackhi_ps(r[l], r[l + 1]);
        }
        for (int l = 0; l < 8; l += 4) {
            r[l] = _mm256_shuffle_ps(t[l], t[l + 2], 0x44);
            r[l + 1] = _mm256_shuffle_ps(t[l], t[l + 2], 0xEE);
            r[l + 2] = _mm256_shuffle_ps(t[l + 1], t[l + 3], 0x44);
            r[l + 3] = _mm256_shuffle_ps(t[l + 1], t[l + 3], 0xEE);
        }
        // r[0..3]: columns 0, 1, 2, 3 of rows 0-3 (low lane) and 4-7 of rows 0-3 (high
        // lane); r[4..7] the same for rows 4-7
        for (int c = 0; c < 4; c++) {
            _mm256_storeu_ps(X + (i + c) * 8, _mm256_permute2f128_ps(r[c], r[c + 4], 0x20));
            _mm256_storeu_ps(X + (i + c + 4) * 8, _mm256_permute2f128_ps(r[c], r[c + 4], 0x31));
        }
    }
    for (; i < d; i++) {
        for (size_t l = 0; l < 8; l++) {
            X[i * 8 + l] = x[l * d + i];
        }
    }
}
#endif

void transpose_in8(const float* x, size_t d, size_t nv, float* X) {
#if defined(__x86_64__)
    if (tq_kernels::simd_level() >= 1) {
        transpose_in8_avx2(x, d, nv, X);
        return;
    }
#endif
    transpose_in8_scalar(x, d, nv, X);
}

/* The scale search of a block (pass 0, t = 1 for every lane, is in C / uc / cc already).
 * Each lane walks the grid t_k = 1 + 0.05 k (search_scale(k)): pass 1 tries k = -1; each
 * later pass continues one step beyond the lane's best so far (down if it is below 1, up
 * if above), or, while the best is still t = 1, tries the side not tried yet. A lane takes
 * the codes of a pass whose cosine criterion uc / sqrt(cc) is strictly larger. Three
 * passes (1, 0.95, then 0.9 or 1.05) give most of what five fixed scales give, at 3/5 of
 * the cost. C2 is scratch (d * 8). */
void search_block_scales(
        quantize_block_fn quantize_block,
        int npasses,
        const float* Y,
        const float* inv,
        size_t d,
        const float* bnd,
        const float* cen,
        uint8_t* C,
        uint8_t* C2,
        double* uc,
        double* cc) {
    double best[8];
    int kbest[8], klo[8], khi[8];
    for (int l = 0; l < 8; l++) {
        best[l] = uc[l] > 0 ? uc[l] / std::sqrt(cc[l]) : -HUGE_VAL;
        kbest[l] = klo[l] = khi[l] = 0;
    }
    for (int p = 1; p < npasses; p++) {
        float t[8];
        int ktry[8];
        for (int l = 0; l < 8; l++) {
            const bool down = kbest[l] < 0 || (kbest[l] == 0 && klo[l] == 0);
            const bool up = kbest[l] > 0 || (kbest[l] == 0 && klo[l] < 0 && khi[l] == 0);
            ktry[l] = down ? --klo[l] : up ? ++khi[l] : 0; // 0: both sides lost, stay
            t[l] = TurboQuantizer::search_scale(ktry[l]);
        }
        double uc2[8], cc2[8];
        quantize_block(Y, inv, t, d, bnd, cen, C2, uc2, cc2);
        uint8_t take[8];
        bool any = false;
        for (int l = 0; l < 8; l++) {
            const double crit = uc2[l] > 0 ? uc2[l] / std::sqrt(cc2[l]) : -HUGE_VAL;
            take[l] = crit > best[l] ? 0xFF : 0;
            if (take[l]) {
                best[l] = crit;
                kbest[l] = ktry[l];
                uc[l] = uc2[l];
                cc[l] = cc2[l];
                any = true;
            }
        }
        if (!any) {
            continue;
        }
        for (size_t i = 0; i < d; i++) {
            for (int l = 0; l < 8; l++) {
                C[i * 8 + l] = (C2[i * 8 + l] & take[l]) | (C[i * 8 + l] & ~take[l]);
            }
        }
    }
}

/// pack the codes of one lane of an SoA block (stride 8) into the b-bit stream
void pack_lane(const uint8_t* C, int lane, size_t d, int nbits, uint8_t* code) {
    for (size_t i = 0; i < d; i += 8) {
        size_t cnt = d - i < 8 ? d - i : 8;
        uint64_t w = 0;
        for (size_t j = 0; j < cnt; j++) {
            w |= uint64_t(C[(i + j) * 8 + lane]) << (j * nbits);
        }
        std::memcpy(code, &w, (cnt * nbits + 7) / 8);
        code += nbits;
    }
}

} // namespace

/* Encoding runs on blocks of 8 vectors held "SoA" (x[i * 8 + lane]): every step below
 * is a loop over the 8 lanes, so the compiler vectorises across vectors while each
 * vector still sees the documented sequential order of operations (the float64 sums
 * run in increasing i per lane), which keeps codes bit-identical to the reference. */
void TurboQuantizer::encode(size_t n, const float* x, uint8_t* codes) const {
    check_finite(n, x, "input");
    const float* cen = codebook.centroids.data();
    const float* bnd = codebook.boundaries.data();
    const int K = 1 << nbits;
    const double sqrt_d = std::sqrt(double(d));
    const bool dense = rotation.kind == TQRotation::DENSE;
    const int64_t nblocks = (n + 7) / 8;
    const quantize_block_fn quantize_block = get_quantize_block(K);
    const int nscales = nbits >= 2 ? scale_search : 1;

#pragma omp parallel if (n > 64)
    {
        std::vector<float> X(d * 8), Y(d * 8), T(d * 8), R, Z;
        std::vector<float> rowmajor(dense ? d * 8 : 0), rotated(dense ? d * 8 : 0);
        std::vector<uint8_t> C(d * 8), C2(nscales > 1 ? d * 8 : 0);
        if (qjl_m > 0) {
            R.resize(d * 8);
            Z.resize(d * 8);
        }
#pragma omp for schedule(static)
        for (int64_t blk = 0; blk < nblocks; blk++) {
            const size_t v0 = size_t(blk) * 8;
            const size_t nv = std::min<size_t>(8, n - v0);
            transpose_in8(x + v0 * d, d, nv, X.data());
            double n2[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (size_t i = 0; i < d; i++) {
                for (int l = 0; l < 8; l++) {
                    double xv = X[i * 8 + l];
                    n2[l] += xv * xv;
                }
            }
            if (dense) {
                std::copy(x + v0 * d, x + (v0 + nv) * d, rowmajor.begin());
                rotation.apply(nv, rowmajor.data(), rotated.data());
                for (size_t i = 0; i < d; i++) {
                    for (size_t l = 0; l < 8; l++) {
                        Y[i * 8 + l] = l < nv ? rotated[l * d + i] : 0.0f;
                    }
                }
            } else {
                std::copy(X.begin(), X.end(), Y.begin());
                rotation.apply_soa8(Y.data(), T.data());
            }
            double norm[8];
            float inv[8];
            for (int l = 0; l < 8; l++) {
                norm[l] = std::sqrt(n2[l]);
                inv[l] = norm[l] > 0 ? float(sqrt_d / norm[l]) : 0.0f;
            }
            double uc[8] = {0, 0, 0, 0, 0, 0, 0, 0}, cc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            const float ones[8] = {1, 1, 1, 1, 1, 1, 1, 1};
            quantize_block(Y.data(), inv, ones, d, bnd, cen, C.data(), uc, cc);
            if (nscales > 1) {
                search_block_scales(
                        quantize_block, nscales, Y.data(), inv, d, bnd, cen, C.data(),
                        C2.data(), uc, cc);
            }
            float ipf_f[8];
            for (size_t l = 0; l < nv; l++) {
                double ipf = 0;
                if (norm[l] > 0 && uc[l] > 0) {
                    switch (correction) {
                        case TQ_CORRECTION_PLAIN: ipf = norm[l] / sqrt_d; break;
                        case TQ_CORRECTION_UNBIASED: ipf = norm[l] * sqrt_d / uc[l]; break;
                        case TQ_CORRECTION_LSQ:
                            ipf = norm[l] * uc[l] / (sqrt_d * cc[l]);
                            break;
                    }
                }
                ipf_f[l] = float(ipf);
                uint8_t* code = codes + (v0 + l) * code_size;
                pack_lane(C.data(), int(l), d, nbits, code);
                uint8_t* factors = code + factors_offset();
                store_float(factors, float(norm[l]));
                store_float(factors + 4, ipf_f[l]);
            }
            if (qjl_m == 0) {
                continue;
            }
            // QJL: residual in the rotated space against the stored MSE estimate
            for (size_t l = nv; l < 8; l++) {
                ipf_f[l] = 0;
            }
            double rn2[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (size_t i = 0; i < d; i++) {
                for (int l = 0; l < 8; l++) {
                    float t = ipf_f[l] * cen[C[i * 8 + l]];
                    float r = Y[i * 8 + l] - t;
                    R[i * 8 + l] = r;
                    rn2[l] += double(r) * double(r);
                }
            }
            for (size_t l = 0; l < nv; l++) {
                uint8_t* code = codes + (v0 + l) * code_size;
                std::memset(code + mse_bytes, 0, qjl_bytes);
                store_float(
                        code + factors_offset() + 8, float(std::sqrt(rn2[l]) * qjl_scale));
            }
            for (size_t j = 0; j < qjl_rotations.size(); j++) {
                std::copy(R.begin(), R.end(), Z.begin());
                qjl_rotations[j].apply_soa8(Z.data(), T.data());
                for (size_t l = 0; l < nv; l++) {
                    uint8_t* bits = codes + (v0 + l) * code_size + mse_bytes;
                    for (size_t i = 0; i < d && j * d + i < qjl_m; i++) {
                        size_t k = j * d + i;
                        if (Z[i * 8 + l] > 0) {
                            bits[k >> 3] |= uint8_t(1u << (k & 7));
                        }
                    }
                }
            }
        }
    }
}

float TurboQuantizer::code_norm(const uint8_t* code) const {
    return load_float(code + factors_offset());
}

void TurboQuantizer::unpack_codes(const uint8_t* code, uint8_t* out) const {
    tq_kernels::unpack_codes(code, d, nbits, out);
}

void TurboQuantizer::decode(size_t n, const uint8_t* codes, float* x) const {
    const float* cen = codebook.centroids.data();
    // E|s_1|^2 * m turns the unbiased QJL factor into the least-squares one
    const double qjl_lsq = qjl_m > 0 ? 1.0 / (qjl_scale * qjl_scale * double(qjl_m)) : 0;
#pragma omp parallel if (n > 256)
    {
        std::vector<float> y(d), z(d), t(d);
        std::vector<uint8_t> c(d);
#pragma omp for
        for (int64_t v = 0; v < int64_t(n); v++) {
            const uint8_t* code = codes + v * code_size;
            const uint8_t* factors = code + factors_offset();
            const float norm = load_float(factors);
            const float ipf = load_float(factors + 4);
            tq_kernels::unpack_codes(code, d, nbits, c.data());
            double cc = 0;
            for (size_t i = 0; i < d; i++) {
                cc += double(cen[c[i]]) * double(cen[c[i]]);
            }
            // scale of the centroid vector in the rotated space
            double s = ipf;
            if (qjl_m == 0 && correction == TQ_CORRECTION_UNBIASED && ipf > 0) {
                s = double(norm) * norm / (double(ipf) * cc); // least-squares scale
            }
            for (size_t i = 0; i < d; i++) {
                y[i] = float(s * cen[c[i]]);
            }
            if (qjl_m > 0) {
                const uint8_t* bits = code + mse_bytes;
                // least-squares length of the sign reconstruction (m > d: rotations
                // overlap, shrink accordingly)
                const double qf = double(load_float(factors + 8)) * qjl_lsq *
                        std::min(1.0, double(d) / double(qjl_m));
                for (size_t j = 0; j < qjl_rotations.size(); j++) {
                    for (size_t i = 0; i < d; i++) {
                        size_t k = j * d + i;
                        z[i] = k < qjl_m ? ((bits[k >> 3] >> (k & 7)) & 1 ? qf : -qf)
                                         : 0.0f;
                    }
                    qjl_rotations[j].apply_transpose(1, z.data(), t.data());
                    for (size_t i = 0; i < d; i++) {
                        y[i] += t[i];
                    }
                }
            }
            rotation.apply_transpose(1, y.data(), x + v * d);
        }
    }
}

void TurboQuantizer::prepare_query(const float* q, Query& query) const {
    query.qrot.resize(d);
    rotation.apply(1, q, query.qrot.data());
    double n2 = 0;
    for (size_t i = 0; i < d; i++) {
        n2 += double(q[i]) * double(q[i]);
    }
    query.qnorm2 = float(n2);
    query.code_dot = tq_kernels::get_code_dot(nbits);
    query.code_dot_many = tq_kernels::get_code_dot_many(nbits);
    query.sum_set_bits = tq_kernels::get_sum_set_bits();
    query.qjl_proj.resize(qjl_m);
    query.qjl_proj_sum = 0;
    if (qjl_m > 0) {
        std::vector<float> z(d);
        for (size_t j = 0; j < qjl_rotations.size(); j++) {
            qjl_rotations[j].apply(1, query.qrot.data(), z.data());
            for (size_t i = 0; i < d && j * d + i < qjl_m; i++) {
                query.qjl_proj[j * d + i] = z[i];
                query.qjl_proj_sum += z[i];
            }
        }
    }
}

float TurboQuantizer::estimate_ip(const Query& query, const uint8_t* code) const {
    float dot = query.code_dot(code, query.qrot.data(), centroid_table.data(), d);
    return combine_ip(query, code, dot);
}

void TurboQuantizer::estimate_distances(
        const Query& query,
        const uint8_t* codes,
        size_t n,
        bool l2,
        float* out) const {
    query.code_dot_many(
            codes, code_size, n, query.qrot.data(), centroid_table.data(), d, out);
    finish_distances(query, codes, n, l2, out);
}

void TurboQuantizer::finish_distances(
        const Query& query,
        const uint8_t* codes,
        size_t n,
        bool l2,
        float* dots) const {
    for (size_t v = 0; v < n; v++) {
        const uint8_t* code = codes + v * code_size;
        float ip = combine_ip(query, code, dots[v]);
        if (l2) {
            float norm = code_norm(code);
            ip = query.qnorm2 + norm * norm - 2 * ip;
        }
        dots[v] = ip;
    }
}

float TurboQuantizer::combine_ip(const Query& query, const uint8_t* code, float dot) const {
    const uint8_t* factors = code + factors_offset();
    float ip = load_float(factors + 4) * dot;
    if (qjl_m > 0) {
        float s = query.sum_set_bits(
                code + mse_bytes, query.qjl_proj.data(), qjl_m);
        ip += load_float(factors + 8) * (2 * s - query.qjl_proj_sum);
    }
    return ip;
}

} // namespace faiss
