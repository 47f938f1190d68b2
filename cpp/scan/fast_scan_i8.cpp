#include "fast_scan_i8.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "code_dot.h"

namespace faiss {
namespace tq_kernels {

namespace {

#if defined(__x86_64__)
bool cpu_has(const char* what) {
    __builtin_cpu_init();
    if (std::strcmp(what, "vnni") == 0) {
        return __builtin_cpu_supports("avx512vnni");
    }
    return __builtin_cpu_supports("avx512vbmi");
}
const bool kHasVnni = cpu_has("vnni");
const bool kHasVbmi = cpu_has("vbmi");
#endif

} // namespace

bool fast_scan_i8_supports(int nbits) {
    if (nbits == 1 || nbits == 2 || nbits == 4) {
        return true;
    }
#if defined(__x86_64__)
    return nbits == 3 && (kHasVbmi || simd_level() == 0);
#else
    return nbits == 3;
#endif
}

bool fast_scan_i8_simd() {
#if defined(__x86_64__)
    return simd_level() >= 2 && kHasVnni;
#else
    return false;
#endif
}

bool fast_scan_i8_single_simd(int nbits) {
    if (fast_scan_i8_simd()) {
        return fast_scan_i8_supports(nbits);
    }
#if defined(__x86_64__)
    return simd_level() >= 1 && nbits != 3 && fast_scan_i8_supports(nbits);
#else
    return false;
#endif
}

bool fast_scan_i8_usable(int nbits) {
    return fast_scan_i8_supports(nbits) &&
            (fast_scan_i8_single_simd(nbits) || simd_level() == 0);
}

namespace {

// round to nearest even, as std::lrint in the default rounding mode, without the libm
// call (lrint is not inlined unless errno handling is switched off)
inline int round_int(float x) {
#if defined(__x86_64__)
    return _mm_cvtss_si32(_mm_set_ss(x));
#else
    return int(std::lrint(x));
#endif
}

} // namespace

namespace {

/// max |q_i| (exact in any order), or +inf if a coordinate is not finite (the IVF
/// scanner does not reject such queries: every path must agree on them too)
float max_abs_scalar(const float* q, size_t d) {
    float m = 0;
    for (size_t i = 0; i < d; i++) {
        const float a = std::fabs(q[i]);
        if (!(a <= FLT_MAX)) {
            return INFINITY;
        }
        m = std::max(m, a);
    }
    return m;
}

/// q8 = round(q * qscale) in stream order (q8_position), the rest of the row zero;
/// returns sum(q8)
int32_t quantize_query_scalar(const float* q, size_t d, float qscale, QueryI8& out) {
    out.q8.assign(out.row_length(), 0);
    int32_t sum = 0;
    for (size_t i = 0; i < d; i++) {
        const int8_t v = int8_t(round_int(q[i] * qscale));
        sum += v;
        out.q8[out.q8_position(i)] = v;
    }
    return sum;
}

#if defined(__x86_64__)
/* quantize_query_scalar for 4-bit codes with AVX2: 32 coordinates at a time are
 * quantised (vcvtps2dq rounds to nearest even, as round_int) and packed to bytes in
 * natural order, then each 128-bit lane's even and odd bytes are gathered (vpshufb) and
 * the lanes' halves regrouped: 16 bytes of stream 0 and 16 of stream 1. */
__attribute__((target("avx2"))) int32_t quantize_query_4bit_avx2(
        const float* q,
        size_t d,
        float qscale,
        QueryI8& out) {
    out.q8.resize(out.row_length());
    const __m256 scale = _mm256_set1_ps(qscale);
    const __m256i split = _mm256_setr_epi8(
            0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
            0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    __m256i sum = _mm256_setzero_si256();
    alignas(32) float tail[32];
    for (size_t g = 0; g < out.ngroups; g++) {
        int8_t* dst = out.q8.data() + g * 128;
        for (int c = 0; c < 4; c++) {
            const size_t i0 = g * 128 + c * 32;
            const float* src = q + i0;
            if (i0 + 32 > d) { // zero-padded copy: coordinates past d quantise to 0
                std::memset(tail, 0, sizeof(tail));
                if (i0 < d) {
                    std::memcpy(tail, q + i0, (d - i0) * sizeof(float));
                }
                src = tail;
            }
            __m256i v[4];
            for (int k = 0; k < 4; k++) {
                v[k] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(src + 8 * k), scale));
                sum = _mm256_add_epi32(sum, v[k]);
            }
            // packs interleave the 128-bit lanes; the dword permute restores natural order
            const __m256i bytes = _mm256_permutevar8x32_epi32(
                    _mm256_packs_epi16(_mm256_packs_epi32(v[0], v[1]), _mm256_packs_epi32(v[2], v[3])),
                    order);
            const __m256i eo = _mm256_permute4x64_epi64(
                    _mm256_shuffle_epi8(bytes, split), 0xD8); // [even 16 | odd 16]
            _mm_storeu_si128((__m128i*)(dst + c * 16), _mm256_castsi256_si128(eo));
            _mm_storeu_si128((__m128i*)(dst + 64 + c * 16), _mm256_extracti128_si256(eo, 1));
        }
    }
    __m128i r = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
    r = _mm_add_epi32(r, _mm_shuffle_epi32(r, 0x4E));
    r = _mm_add_epi32(r, _mm_shuffle_epi32(r, 0xB1));
    return _mm_cvtsi128_si32(r);
}

#define TQ_AVX512_BW_VBMI __attribute__((target("avx512f,avx512bw,avx512vbmi")))

TQ_AVX512_BW_VBMI float max_abs_avx512(const float* q, size_t d) {
    __m512 m = _mm512_setzero_ps();
    const __m512 big = _mm512_set1_ps(FLT_MAX);
    __mmask16 bad = 0;
    for (size_t i = 0; i < d; i += 16) {
        const __mmask16 k = d - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (d - i)) - 1);
        const __m512 a = _mm512_abs_ps(_mm512_maskz_loadu_ps(k, q + i));
        bad |= _mm512_cmp_ps_mask(a, big, _CMP_NLE_UQ); // NaN or infinite
        m = _mm512_max_ps(m, a);
    }
    return bad ? INFINITY : _mm512_reduce_max_ps(m);
}

/* quantize_query_scalar for 4-bit codes: a group of 128 coordinates is quantised in
 * natural order (vcvtps2dq rounds to nearest even, as round_int), then its even and odd
 * coordinates become streams 0 and 1 with one two-source byte permute each. An IVF index
 * with L2 prepares a query per visited list, so this runs as often as short lists are
 * scanned. */
TQ_AVX512_BW_VBMI int32_t quantize_query_4bit_avx512(
        const float* q,
        size_t d,
        float qscale,
        QueryI8& out) {
    out.q8.resize(out.row_length());
    const __m512 scale = _mm512_set1_ps(qscale);
    __m512i sum = _mm512_setzero_si512();
    __m512i even, odd;
    {
        alignas(64) uint8_t e[64], o[64];
        for (int j = 0; j < 64; j++) {
            e[j] = uint8_t(2 * j); // bytes 0..63 of the first source, 64..127 of the second
            o[j] = uint8_t(2 * j + 1);
        }
        even = _mm512_load_si512(e);
        odd = _mm512_load_si512(o);
    }
    for (size_t g = 0; g < out.ngroups; g++) {
        __m512i half[2];
        for (int h = 0; h < 2; h++) {
            __m128i b[4];
            for (int c = 0; c < 4; c++) {
                const size_t i0 = g * 128 + h * 64 + c * 16;
                const size_t left = i0 < d ? d - i0 : 0;
                const __mmask16 k = left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
                const __m512i v = _mm512_cvtps_epi32(
                        _mm512_mul_ps(_mm512_maskz_loadu_ps(k, q + i0), scale));
                sum = _mm512_add_epi32(sum, v);
                b[c] = _mm512_cvtepi32_epi8(v);
            }
            half[h] = _mm512_inserti32x4(
                    _mm512_inserti32x4(
                            _mm512_inserti32x4(_mm512_castsi128_si512(b[0]), b[1], 1), b[2], 2),
                    b[3], 3);
        }
        int8_t* dst = out.q8.data() + g * 128;
        _mm512_storeu_si512(dst, _mm512_permutex2var_epi8(half[0], even, half[1]));
        _mm512_storeu_si512(dst + 64, _mm512_permutex2var_epi8(half[0], odd, half[1]));
    }
    return _mm512_reduce_add_epi32(sum);
}
#endif

} // namespace

void prepare_query_i8(
        const float* qrot,
        const float* centroids,
        size_t d,
        int nbits,
        float qnorm2,
        QueryI8& out) {
    const int ncen = 1 << nbits;
#if defined(__x86_64__)
    const bool simd4 = nbits == 4 && fast_scan_i8_simd() && kHasVbmi;
#else
    const bool simd4 = false;
#endif
    float cmax = 0;
#if defined(__x86_64__)
    const float qmax = simd4 ? max_abs_avx512(qrot, d) : max_abs_scalar(qrot, d);
#else
    const float qmax = max_abs_scalar(qrot, d);
#endif
    for (int j = 0; j < ncen; j++) {
        cmax = std::max(cmax, std::fabs(centroids[j]));
    }
    // a zero query, a non-finite one (qmax = inf) and one so small that 127 / qmax
    // overflows all get the zero 8-bit query: same bytes on every path
    float qscale = qmax > 0 ? 127.0f / qmax : 0.0f;
    if (!(qscale <= FLT_MAX)) {
        qscale = 0;
    }
    const float cscale = cmax > 0 ? 127.0f / cmax : 0.0f;
    for (int e = 0; e < 64; e++) {
        out.table[e] = uint8_t(round_int(centroids[e % ncen] * cscale) + 128);
    }
    out.nbits = nbits;
    out.code_bytes = (d * nbits + 7) / 8;
    out.ngroups = (out.code_bytes + out.group_bytes() - 1) / out.group_bytes();
    int32_t sum = 0;
    if (qscale == 0) {
        out.q8.assign(out.row_length(), 0);
    } else { // |q_i * qscale| <= 127: no saturation, the paths agree
#if defined(__x86_64__)
        sum = simd4 ? quantize_query_4bit_avx512(qrot, d, qscale, out)
                : nbits == 4 && simd_level() >= 1
                ? quantize_query_4bit_avx2(qrot, d, qscale, out)
                : quantize_query_scalar(qrot, d, qscale, out);
#else
        sum = quantize_query_scalar(qrot, d, qscale, out);
#endif
    }
    out.bias = 128 * sum;
    out.inv_scale = qscale > 0 && cscale > 0 ? 1.0f / (qscale * cscale) : 0.0f;
    out.qnorm2 = qnorm2;
}

namespace {

// code i of a vector, bytes past code_bytes read as zero (as the masked loads do)
inline int code_at(const uint8_t* code, size_t i, const QueryI8& q) {
    const size_t bit = i * q.nbits;
    uint32_t w = 0;
    for (size_t b = bit / 8; b < bit / 8 + 2 && b < q.code_bytes; b++) {
        w |= uint32_t(code[b]) << (8 * (b - bit / 8));
    }
    return (w >> (bit % 8)) & ((1 << q.nbits) - 1);
}

} // namespace

int32_t dot_sum_i8(const uint8_t* code, const QueryI8& q) {
    int32_t acc = 0;
    for (size_t i = 0; i < q.row_length(); i++) {
        acc += int32_t(q.table[code_at(code, i, q)]) * q.q8[q.q8_position(i)];
    }
    return acc;
}

void pack_panels_i8(const QueryI8* const* q, size_t nq, PanelsI8& out) {
    const size_t L = nq ? q[0]->row_length() : 0;
    out.nq = nq;
    out.npanels = (nq + 15) / 16;
    out.row_length = L;
    out.b.assign(out.npanels * L * 16, 0);
    out.bias.assign(out.npanels * 16, 0);
    out.inv.assign(out.npanels * 16, 0.0f);
    out.qnorm2.assign(out.npanels * 16, 0.0f);
    for (size_t j = 0; j < nq; j++) {
        const size_t panel = j / 16, lane = j % 16;
        int8_t* b = out.b.data() + panel * L * 16;
        for (size_t t = 0; t < L / 4; t++) {
            std::memcpy(b + (t * 16 + lane) * 4, q[j]->q8.data() + 4 * t, 4);
        }
        out.bias[j] = q[j]->bias;
        out.inv[j] = q[j]->inv_scale;
        out.qnorm2[j] = q[j]->qnorm2;
    }
}

namespace {

void load_factors_scalar(
        const uint8_t* codes,
        size_t stride,
        size_t n,
        size_t offset,
        float* ipf,
        float* norm) {
    for (size_t v = 0; v < n; v++) {
        std::memcpy(norm + v, codes + v * stride + offset, 4);
        std::memcpy(ipf + v, codes + v * stride + offset + 4, 4);
    }
}

size_t scan_i8_scalar(
        const uint8_t* codes,
        size_t stride,
        size_t n,
        size_t foff,
        const QueryI8& q,
        bool l2,
        float threshold,
        float* dis_out,
        uint32_t* pos_out) {
    size_t cnt = 0;
    float ipf, norm;
    for (size_t v = 0; v < n; v++) {
        const uint8_t* code = codes + v * stride;
        load_factors_scalar(code, stride, 1, foff, &ipf, &norm);
        const float dis = approx_distance(dot_sum_i8(code, q), q, ipf, norm, l2);
        if (l2 ? dis < threshold : dis > threshold) {
            dis_out[cnt] = dis;
            pos_out[cnt++] = uint32_t(v);
        }
    }
    return cnt;
}

void decode_scalar(const uint8_t* codes, size_t stride, size_t n, const QueryI8& q, uint8_t* rows) {
    const size_t L = q.row_length();
    for (size_t v = 0; v < n; v++) {
        for (size_t i = 0; i < L; i++) {
            rows[v * L + q.q8_position(i)] = q.table[code_at(codes + v * stride, i, q)];
        }
    }
}

size_t scan_panels_scalar(
        const uint8_t* rows,
        const float* ipf,
        const float* norm,
        size_t n,
        const PanelsI8& p,
        size_t panel0,
        size_t npan,
        bool l2,
        const float* thresholds,
        CandidateI8* out) {
    const size_t L = p.row_length;
    size_t cnt = 0;
    for (size_t v = 0; v < n; v++) {
        for (size_t j = panel0 * 16; j < std::min(p.nq, (panel0 + npan) * 16); j++) {
            const int8_t* b = p.b.data() + (j / 16) * L * 16 + (j % 16) * 4;
            int32_t sum = 0;
            for (size_t t = 0; t < L / 4; t++) {
                for (int e = 0; e < 4; e++) {
                    sum += int32_t(rows[v * L + 4 * t + e]) * b[t * 64 + e];
                }
            }
            const float dot = float(sum - p.bias[j]) * p.inv[j];
            const float ip = ipf[v] * dot;
            const float dis = l2 ? (p.qnorm2[j] + norm[v] * norm[v]) - 2 * ip : ip;
            if (l2 ? dis < thresholds[j] : dis > thresholds[j]) {
                out[cnt++] = CandidateI8{uint32_t(j), uint32_t(v), dis};
            }
        }
    }
    return cnt;
}

#if defined(__x86_64__)
/* AVX2 (no VNNI), 1, 2 and 4 bits, one code at a time: 32 code bytes per load, each
 * stream masked out and turned into signed centroid bytes c8 - 128 by one vpshufb, widened
 * to 16 bits with the query and multiplied by vpmaddwd (no saturation: |c| <= 127,
 * |q| <= 127). The sum is S - bias, the same integer as the VNNI kernels', so the results
 * are the same bits. A partial last group is read through a zero-padded copy (bytes past
 * the code meet q8 = 0, but must not be read past the end of the array). */
template <int NBITS>
__attribute__((target("avx2"))) size_t scan_i8_avx2(
        const uint8_t* codes,
        size_t stride,
        size_t n,
        size_t foff,
        const QueryI8& q,
        bool l2,
        float threshold,
        float* dis_out,
        uint32_t* pos_out) {
    constexpr int CPB = 8 / NBITS;
    alignas(32) int8_t t32[32];
    for (int e = 0; e < 16; e++) {
        t32[e] = t32[e + 16] = int8_t(int(q.table[e]) - 128);
    }
    const __m256i tab = _mm256_load_si256((const __m256i*)t32);
    const __m256i mask = _mm256_set1_epi8(char((1 << NBITS) - 1));
    alignas(32) uint8_t tail[64];
    size_t cnt = 0;
    for (size_t v = 0; v < n; v++) {
        const uint8_t* code = codes + v * stride;
        if (v + 16 < n) {
            for (size_t b = 0; b < stride; b += 64) {
                _mm_prefetch((const char*)(code + 16 * stride + b), _MM_HINT_T0);
            }
        }
        __m256i acc = _mm256_setzero_si256();
        for (size_t g = 0; g < q.ngroups; g++) {
            const uint8_t* src = code + g * 64;
            if (g * 64 + 64 > q.code_bytes) {
                std::memset(tail, 0, 64);
                std::memcpy(tail, src, q.code_bytes - g * 64);
                src = tail;
            }
            for (int h = 0; h < 2; h++) {
                const __m256i x = _mm256_loadu_si256((const __m256i*)(src + 32 * h));
                for (int s = 0; s < CPB; s++) {
                    const __m256i idx = _mm256_and_si256(
                            s == 0 ? x : _mm256_srli_epi16(x, s * NBITS), mask);
                    const __m256i c = _mm256_shuffle_epi8(tab, idx);
                    const int8_t* qp = q.q8.data() + (g * CPB + s) * 64 + 32 * h;
                    const __m256i lo = _mm256_madd_epi16(
                            _mm256_cvtepi8_epi16(_mm256_castsi256_si128(c)),
                            _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)qp)));
                    const __m256i hi = _mm256_madd_epi16(
                            _mm256_cvtepi8_epi16(_mm256_extracti128_si256(c, 1)),
                            _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(qp + 16))));
                    acc = _mm256_add_epi32(acc, _mm256_add_epi32(lo, hi));
                }
            }
        }
        __m128i r = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
        r = _mm_add_epi32(r, _mm_shuffle_epi32(r, 0x4E));
        r = _mm_add_epi32(r, _mm_shuffle_epi32(r, 0xB1));
        const int32_t centred = _mm_cvtsi128_si32(r); // S - bias
        float ipf, norm;
        load_factors_scalar(code, stride, 1, foff, &ipf, &norm);
        const float dis = approx_distance(centred + q.bias, q, ipf, norm, l2);
        if (l2 ? dis < threshold : dis > threshold) {
            dis_out[cnt] = dis;
            pos_out[cnt++] = uint32_t(v);
        }
    }
    return cnt;
}
#endif

#if defined(__x86_64__)
#define TQ_AVX512_VNNI \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,popcnt")))
// the helpers must be inlined: every zmm register is caller-saved, so a call would spill
// the kernel's constants around each block
#define TQ_INLINE inline __attribute__((always_inline))

// 16 named accumulators: GCC keeps an array of 16 zmm accumulators on the stack, which
// serialises the scan on store-to-load forwarding
#define TQ_FOR_ACC16(X) \
    X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15)

/* Horizontal sums of 16 accumulators of 16 int32 lanes: lane i of the result is the sum
 * of acc[i]. Pairs are folded with unpacks inside 128-bit lanes, then the four 128-bit
 * lanes with cross-lane shuffles (45 operations for 16 sums). */
TQ_AVX512_VNNI TQ_INLINE __m512i reduce16(const __m512i* acc) {
    __m512i r[8], s[4];
    for (int i = 0; i < 8; i++) { // [a0+a2, b0+b2, a1+a3, b1+b3] per 128-bit lane
        r[i] = _mm512_add_epi32(
                _mm512_unpacklo_epi32(acc[2 * i], acc[2 * i + 1]),
                _mm512_unpackhi_epi32(acc[2 * i], acc[2 * i + 1]));
    }
    for (int i = 0; i < 4; i++) { // [a, b, c, d] partial sums per 128-bit lane
        s[i] = _mm512_add_epi32(
                _mm512_unpacklo_epi64(r[2 * i], r[2 * i + 1]),
                _mm512_unpackhi_epi64(r[2 * i], r[2 * i + 1]));
    }
    __m512i t0 = _mm512_add_epi32(
            _mm512_shuffle_i32x4(s[0], s[1], 0x88), _mm512_shuffle_i32x4(s[0], s[1], 0xDD));
    __m512i t1 = _mm512_add_epi32(
            _mm512_shuffle_i32x4(s[2], s[3], 0x88), _mm512_shuffle_i32x4(s[2], s[3], 0xDD));
    return _mm512_add_epi32(
            _mm512_shuffle_i32x4(t0, t1, 0x88), _mm512_shuffle_i32x4(t0, t1, 0xDD));
}

/// the 8-bit centroids of code stream s of the group x (64 code bytes; for 3 bits the
/// first 24 bytes, whose 64 codes are spread to one byte each: a byte permute puts each
/// 3-byte run of 8 codes in its own 64-bit word, a multishift moves code k to byte k)
// 3-bit spreading: byte 8w + m of the permuted group is source byte 3w + min(m, 2), and
// byte k of each 64-bit word then takes bits 3k.. of its word
alignas(64) const uint8_t kRuns3[64] = {
        0,  1,  2,  2,  2,  2,  2,  2,  3,  4,  5,  5,  5,  5,  5,  5,
        6,  7,  8,  8,  8,  8,  8,  8,  9,  10, 11, 11, 11, 11, 11, 11,
        12, 13, 14, 14, 14, 14, 14, 14, 15, 16, 17, 17, 17, 17, 17, 17,
        18, 19, 20, 20, 20, 20, 20, 20, 21, 22, 23, 23, 23, 23, 23, 23};
const uint64_t kShifts3 = 0x15120F0C09060300ULL; // 0, 3, ..., 21

template <int NBITS, bool VBMI>
TQ_AVX512_VNNI TQ_INLINE __m512i stream_values(__m512i x, int s, __m512i table) {
    if (NBITS == 3) { // VBMI only (fast_scan_i8_supports)
        const __m512i runs = _mm512_permutexvar_epi8(_mm512_load_si512(kRuns3), x);
        return _mm512_permutexvar_epi8(
                _mm512_multishift_epi64_epi8(_mm512_set1_epi64(int64_t(kShifts3)), runs),
                table);
    }
    const __m512i idx = s == 0 ? x : _mm512_srli_epi16(x, s * NBITS);
    if (VBMI) { // the 64-entry table repeats every 2^NBITS entries: no masking needed
        return _mm512_permutexvar_epi8(idx, table);
    }
    return _mm512_shuffle_epi8(table, _mm512_and_si512(idx, _mm512_set1_epi8((1 << NBITS) - 1)));
}

// address of code i (0..15) of a block at byte offset `off`, from two base pointers and
// three odd multiples of the stride (x86 addressing scales them by 1, 2, 4 or 8): the
// sixteen code pointers would not fit in the general-purpose registers
#define TQ_CODE_ADDR(i)                                                                 \
    ((i) % 8 == 0 ? b##i##_base                                                         \
     : (i) % 8 == 1 ? b##i##_base + s1                                                  \
     : (i) % 8 == 2 ? b##i##_base + 2 * s1                                              \
     : (i) % 8 == 3 ? b##i##_base + s3                                                  \
     : (i) % 8 == 4 ? b##i##_base + 4 * s1                                              \
     : (i) % 8 == 5 ? b##i##_base + s5                                                  \
     : (i) % 8 == 6 ? b##i##_base + 2 * s3                                              \
                    : b##i##_base + s7)

/* Raw sums of 16 consecutive codes for one query (lane v = code v). Each 64-byte group of
 * a code is loaded once, each code stream becomes 8-bit centroids with one byte permute,
 * multiplied into the query with vpdpbusd; the 16 horizontal sums are folded at the end.
 * The lines of the 16 codes four blocks ahead are prefetched on the way (one per code and group, the
 * rest after the loop): 16 interleaved streams are more than the hardware prefetchers
 * follow, and the scan runs from L3 at several times DRAM speed when they are ahead. */
template <int NBITS, bool VBMI>
TQ_AVX512_VNNI TQ_INLINE __m512i sums16(
        const uint8_t* codes,
        size_t stride,
        const QueryI8& q,
        const __m512i table) {
    constexpr int CPB = NBITS == 3 ? 1 : 8 / NBITS;  // streams per group
    constexpr size_t GB = NBITS == 3 ? 24 : 64;     // code bytes per group
    const size_t ngroups = q.ngroups, code_bytes = q.code_bytes;
    const size_t s1 = stride, s3 = 3 * stride, s5 = 5 * stride, s7 = 7 * stride;
    const uint8_t* next = codes + 64 * stride; // four blocks ahead: covers L3 latency
#define TQ_ZERO(i) __m512i a##i = _mm512_setzero_si512();
    TQ_FOR_ACC16(TQ_ZERO)
#undef TQ_ZERO
    // pointers advanced by the loop (loop-invariant code pointers would be hoisted, 16 of
    // them, and spilled)
    const uint8_t* lo = codes;             // codes 0..7 at the current group
    const uint8_t* hi = codes + 8 * stride; // codes 8..15
    const uint8_t* pf = next;              // 16 lines of that block per group
    const int8_t* qs = q.q8.data();
    for (size_t g = 0; g < ngroups; g++, lo += GB, hi += GB, pf += 1024, qs += CPB * 64) {
        const size_t off = g * GB;
        const __mmask64 m = off + GB <= code_bytes ? (~__mmask64(0) >> (64 - GB))
                                                   : (__mmask64(1) << (code_bytes - off)) - 1;
#define b0_base lo
#define b1_base lo
#define b2_base lo
#define b3_base lo
#define b4_base lo
#define b5_base lo
#define b6_base lo
#define b7_base lo
#define b8_base hi
#define b9_base hi
#define b10_base hi
#define b11_base hi
#define b12_base hi
#define b13_base hi
#define b14_base hi
#define b15_base hi
#define TQ_STEP(i)                                                                      \
    {                                                                                   \
        _mm_prefetch((const char*)(pf + 64 * i), _MM_HINT_T0);                          \
        const __m512i x = _mm512_maskz_loadu_epi8(m, TQ_CODE_ADDR(i));                  \
        for (int s = 0; s < CPB; s++) {                                                 \
            a##i = _mm512_dpbusd_epi32(                                                 \
                    a##i,                                                               \
                    stream_values<NBITS, VBMI>(x, s, table),                            \
                    _mm512_loadu_si512(qs + s * 64));                                   \
        }                                                                               \
    }
        TQ_FOR_ACC16(TQ_STEP)
#undef TQ_STEP
    }
    for (size_t b = ngroups * 1024; b < 16 * stride; b += 64) { // lines not covered above
        _mm_prefetch((const char*)(next + b), _MM_HINT_T0);
    }
#define TQ_LIST(i) a##i,
    const __m512i acc[16] = {TQ_FOR_ACC16(TQ_LIST)};
#undef TQ_LIST
    return reduce16(acc);
}

/// (norm, ipf) of 16 codes: 8-byte loads paired per 128-bit lane, then one two-source
/// permute per output (AMD's gathers are several times slower)
TQ_AVX512_VNNI TQ_INLINE void factors16(
        const uint8_t* base,
        size_t stride,
        __m512* norm,
        __m512* ipf) {
    __m128i p[8];
    for (int i = 0; i < 8; i++) {
        p[i] = _mm_castpd_si128(_mm_loadh_pd(
                _mm_castsi128_pd(_mm_loadl_epi64((const __m128i*)(base + 2 * i * stride))),
                (const double*)(base + (2 * i + 1) * stride)));
    }
    __m512i lo = _mm512_castsi128_si512(p[0]), hi = _mm512_castsi128_si512(p[4]);
    lo = _mm512_inserti32x4(lo, p[1], 1);
    hi = _mm512_inserti32x4(hi, p[5], 1);
    lo = _mm512_inserti32x4(lo, p[2], 2);
    hi = _mm512_inserti32x4(hi, p[6], 2);
    lo = _mm512_inserti32x4(lo, p[3], 3);
    hi = _mm512_inserti32x4(hi, p[7], 3);
    const __m512i even =
            _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    *norm = _mm512_castsi512_ps(_mm512_permutex2var_epi32(lo, even, hi));
    *ipf = _mm512_castsi512_ps(
            _mm512_permutex2var_epi32(lo, _mm512_add_epi32(even, _mm512_set1_epi32(1)), hi));
}

/// approx_distance on 16 lanes (same operations, same order)
TQ_AVX512_VNNI TQ_INLINE __m512 approx_distance16(
        __m512i sum,
        __m512i bias,
        __m512 inv,
        __m512 ipf,
        __m512 norm,
        __m512 qnorm2,
        bool l2) {
    const __m512 dot = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(sum, bias)), inv);
    const __m512 ip = _mm512_mul_ps(ipf, dot);
    if (!l2) {
        return ip;
    }
    return _mm512_sub_ps(
            _mm512_add_ps(qnorm2, _mm512_mul_ps(norm, norm)),
            _mm512_mul_ps(_mm512_set1_ps(2.0f), ip));
}

TQ_AVX512_VNNI TQ_INLINE __mmask16 beats16(__m512 dis, __m512 thr, bool l2) {
    return l2 ? _mm512_cmp_ps_mask(dis, thr, _CMP_LT_OQ) : _mm512_cmp_ps_mask(dis, thr, _CMP_GT_OQ);
}

/// distances of the 16 codes of block pv from their raw sums; appends those that beat
/// thr (compressed in registers, masked stores; rare once the heap is warm)
TQ_AVX512_VNNI TQ_INLINE size_t finish16(
        __m512i sum,
        const uint8_t* codes,
        size_t stride,
        size_t pv,
        size_t foff,
        __m512i bias,
        __m512 inv,
        __m512 qn2,
        __m512 thr,
        bool l2,
        float* dis_out,
        uint32_t* pos_out,
        __mmask16 valid = 0xFFFF) {
    __m512 norm, ipf;
    factors16(codes + pv * stride + foff, stride, &norm, &ipf);
    const __m512 dis = approx_distance16(sum, bias, inv, ipf, norm, qn2, l2);
    const __mmask16 m = beats16(dis, thr, l2) & valid;
    if (!m) {
        return 0;
    }
    const __mmask16 head = __mmask16((1u << __builtin_popcount(m)) - 1);
    _mm512_mask_storeu_ps(dis_out, head, _mm512_maskz_compress_ps(m, dis));
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i pos = _mm512_add_epi32(iota, _mm512_set1_epi32(int(pv)));
    _mm512_mask_storeu_epi32(pos_out, head, _mm512_maskz_compress_epi32(m, pos));
    return __builtin_popcount(m);
}

template <int NBITS, bool VBMI>
TQ_AVX512_VNNI size_t scan_i8_avx512(
        const uint8_t* codes,
        size_t stride,
        size_t n,
        size_t foff,
        const QueryI8& q,
        bool l2,
        float threshold,
        float* dis_out,
        uint32_t* pos_out) {
    const __m512i table = _mm512_loadu_si512(q.table);
    const __m512i bias = _mm512_set1_epi32(q.bias);
    const __m512 inv = _mm512_set1_ps(q.inv_scale), qn2 = _mm512_set1_ps(q.qnorm2);
    const __m512 thr = _mm512_set1_ps(threshold);
    size_t cnt = 0, v = 0;
    // software pipeline: block v - 16 is finished after the dot products of block v are
    // issued, so the long chain of horizontal sums -> distances -> compare of one block
    // overlaps the next block's loop instead of stalling the window (measured -8%/code)
    __m512i prev = _mm512_setzero_si512();
    for (; v + 16 <= n; v += 16) {
        const __m512i sum = sums16<NBITS, VBMI>(codes + v * stride, stride, q, table);
        if (v > 0) {
            cnt += finish16(prev, codes, stride, v - 16, foff, bias, inv, qn2, thr, l2,
                            dis_out + cnt, pos_out + cnt);
        }
        prev = sum;
    }
    if (v > 0) {
        cnt += finish16(prev, codes, stride, v - 16, foff, bias, inv, qn2, thr, l2,
                        dis_out + cnt, pos_out + cnt);
    }
    if (v < n) { // the last n - v < 16 codes (short inverted lists: most of a list)
        const size_t rem = n - v;
        // a zero-padded copy: the kernel reads 16 codes, the array may end before
        thread_local std::vector<uint8_t> pad;
        pad.resize(16 * stride);
        std::memcpy(pad.data(), codes + v * stride, rem * stride);
        std::memset(pad.data() + rem * stride, 0, (16 - rem) * stride);
        const __m512i sum = sums16<NBITS, VBMI>(pad.data(), stride, q, table);
        const size_t c = finish16(sum, pad.data(), stride, 0, foff, bias, inv, qn2, thr, l2,
                                  dis_out + cnt, pos_out + cnt, __mmask16((1u << rem) - 1));
        for (size_t i = cnt; i < cnt + c; i++) {
            pos_out[i] += uint32_t(v);
        }
        cnt += c;
    }
    return cnt;
}

template <int NBITS, bool VBMI>
TQ_AVX512_VNNI void decode_avx512(
        const uint8_t* codes,
        size_t stride,
        size_t n,
        const QueryI8& q,
        uint8_t* rows) {
    constexpr int CPB = NBITS == 3 ? 1 : 8 / NBITS;
    constexpr size_t GB = NBITS == 3 ? 24 : 64;
    const __m512i table = _mm512_loadu_si512(q.table);
    const size_t L = q.row_length();
    for (size_t v = 0; v < n; v++) {
        for (size_t g = 0; g < q.ngroups; g++) {
            const size_t off = g * GB;
            const __mmask64 m = off + GB <= q.code_bytes
                    ? (~__mmask64(0) >> (64 - GB))
                    : (__mmask64(1) << (q.code_bytes - off)) - 1;
            const __m512i x = _mm512_maskz_loadu_epi8(m, codes + v * stride + off);
            uint8_t* out = rows + v * L + g * CPB * 64;
            for (int s = 0; s < CPB; s++) {
                _mm512_storeu_si512(out + s * 64, stream_values<NBITS, VBMI>(x, s, table));
            }
        }
    }
}

/* NR rows x NP panels of 16 queries (NR * NP <= 16 accumulators): accumulator i holds
 * row i / NP against panel i % NP, one lane per query; 4 centroid bytes of a row are
 * broadcast and multiplied into a whole panel by one vpdpbusd, so no horizontal sums are
 * needed. 4 x 4 loads 8 registers per 16 vpdpbusd (8 x 2 loads 10). */
template <int NR, int NP>
TQ_AVX512_VNNI size_t panels_tile(
        const uint8_t* rows,
        const float* ipf,
        const float* norm,
        const PanelsI8& p,
        size_t panel,
        bool l2,
        const float* thresholds,
        uint32_t pos0,
        CandidateI8* out) {
    static_assert(NR * NP <= 16 && NP <= 4, "tile");
    const size_t L = p.row_length;
    const int8_t* b0 = p.b.data() + panel * L * 16;
    const int8_t* b1 = NP > 1 ? b0 + L * 16 : b0;
    const int8_t* b2 = NP > 2 ? b0 + 2 * L * 16 : b0;
    const int8_t* b3 = NP > 3 ? b0 + 3 * L * 16 : b0;
#define TQ_ZERO(i) __m512i a##i = _mm512_setzero_si512();
    TQ_FOR_ACC16(TQ_ZERO)
#undef TQ_ZERO
    for (size_t t = 0; t < L / 4; t++) {
        const __m512i p0 = _mm512_loadu_si512(b0 + t * 64);
        const __m512i p1 = _mm512_loadu_si512(b1 + t * 64);
        const __m512i p2 = _mm512_loadu_si512(b2 + t * 64);
        const __m512i p3 = _mm512_loadu_si512(b3 + t * 64);
#define TQ_STEP(i)                                                                        \
    if (i < NR * NP) {                                                                    \
        int32_t w;                                                                        \
        std::memcpy(&w, rows + (i / NP) * L + 4 * t, 4);                                  \
        a##i = _mm512_dpbusd_epi32(                                                       \
                a##i,                                                                     \
                _mm512_set1_epi32(w),                                                     \
                i % NP == 0 ? p0 : i % NP == 1 ? p1 : i % NP == 2 ? p2 : p3);             \
    }
        TQ_FOR_ACC16(TQ_STEP)
#undef TQ_STEP
    }
    size_t cnt = 0;
    for (int pp = 0; pp < NP; pp++) {
        const size_t lane0 = (panel + pp) * 16;
        const __m512i bias = _mm512_loadu_si512(p.bias.data() + lane0);
        const __m512 inv = _mm512_loadu_ps(p.inv.data() + lane0);
        const __m512 qn2 = _mm512_loadu_ps(p.qnorm2.data() + lane0);
        const __m512 thr = _mm512_loadu_ps(thresholds + lane0);
        const __mmask16 valid = lane0 + 16 <= p.nq ? __mmask16(0xFFFF)
                                                   : __mmask16((1u << (p.nq - lane0)) - 1);
#define TQ_EPI(i)                                                                          \
    if (i < NR * NP && i % NP == pp) {                                                     \
        const int v = i / NP;                                                              \
        const __m512 dis = approx_distance16(                                              \
                a##i, bias, inv, _mm512_set1_ps(ipf[v]), _mm512_set1_ps(norm[v]), qn2, l2); \
        __mmask16 m = beats16(dis, thr, l2) & valid;                                       \
        if (m) {                                                                           \
            alignas(64) float d16[16];                                                     \
            _mm512_store_ps(d16, dis);                                                     \
            for (; m; m &= m - 1) {                                                        \
                const int lane = __builtin_ctz(m);                                         \
                out[cnt++] = CandidateI8{uint32_t(lane0 + lane), pos0 + v, d16[lane]};      \
            }                                                                              \
        }                                                                                  \
    }
        TQ_FOR_ACC16(TQ_EPI)
#undef TQ_EPI
    }
    return cnt;
}

size_t scan_panels_avx512(
        const uint8_t* rows,
        const float* ipf,
        const float* norm,
        size_t n,
        const PanelsI8& p,
        size_t panel0,
        size_t npan,
        bool l2,
        const float* thresholds,
        CandidateI8* out) {
    const size_t L = p.row_length;
    // panel groups outer: a group's packed queries (up to 4 x L x 16 bytes) stay in L1
    // while every tile of rows of the block is multiplied into them
    size_t cnt = 0;
    const size_t v_end = n / 8 * 8;
    const size_t pan_end = panel0 + npan;
    for (size_t pan = panel0; pan < pan_end;) {
        const size_t left = pan_end - pan;
        for (size_t v = 0; v < v_end; v += left >= 4 ? 4 : 8) {
            auto* o = out + cnt;
            cnt += left >= 4 ? panels_tile<4, 4>(rows + v * L, ipf + v, norm + v, p, pan, l2,
                                                 thresholds, uint32_t(v), o)
                    : left >= 2 ? panels_tile<8, 2>(rows + v * L, ipf + v, norm + v, p, pan,
                                                    l2, thresholds, uint32_t(v), o)
                                : panels_tile<8, 1>(rows + v * L, ipf + v, norm + v, p, pan,
                                                    l2, thresholds, uint32_t(v), o);
        }
        pan += left >= 4 ? 4 : left >= 2 ? 2 : 1;
    }
    const size_t v = v_end;
    const size_t c = scan_panels_scalar(
            rows + v * L, ipf + v, norm + v, n - v, p, panel0, npan, l2, thresholds, out + cnt);
    for (size_t i = cnt; i < cnt + c; i++) {
        out[i].pos += uint32_t(v);
    }
    return cnt + c;
}

TQ_AVX512_VNNI void load_factors_avx512(
        const uint8_t* codes,
        size_t stride,
        size_t n,
        size_t offset,
        float* ipf,
        float* norm) {
    size_t v = 0;
    for (; v + 16 <= n; v += 16) {
        __m512 nr, f;
        factors16(codes + v * stride + offset, stride, &nr, &f);
        _mm512_storeu_ps(norm + v, nr);
        _mm512_storeu_ps(ipf + v, f);
    }
    load_factors_scalar(codes + v * stride, stride, n - v, offset, ipf + v, norm + v);
}

// the implementations for a bit width, with and without VBMI byte permutes
typedef size_t (*scan_fn)(
        const uint8_t*, size_t, size_t, size_t, const QueryI8&, bool, float, float*, uint32_t*);
typedef void (*decode_fn)(const uint8_t*, size_t, size_t, const QueryI8&, uint8_t*);

template <bool VBMI>
scan_fn scan_for(int nbits) {
    return nbits == 1 ? scan_i8_avx512<1, VBMI>
            : nbits == 2 ? scan_i8_avx512<2, VBMI>
            : nbits == 3 ? scan_i8_avx512<3, true>
                         : scan_i8_avx512<4, VBMI>;
}

template <bool VBMI>
decode_fn decode_for(int nbits) {
    return nbits == 1 ? decode_avx512<1, VBMI>
            : nbits == 2 ? decode_avx512<2, VBMI>
            : nbits == 3 ? decode_avx512<3, true>
                         : decode_avx512<4, VBMI>;
}
#endif

} // namespace

size_t scan_i8(
        const uint8_t* codes,
        size_t stride,
        size_t n,
        size_t factors_offset,
        const QueryI8& q,
        bool l2,
        float threshold,
        float* dis_out,
        uint32_t* pos_out) {
#if defined(__x86_64__)
    if (fast_scan_i8_simd()) {
        const scan_fn f = kHasVbmi ? scan_for<true>(q.nbits) : scan_for<false>(q.nbits);
        return f(codes, stride, n, factors_offset, q, l2, threshold, dis_out, pos_out);
    }
    if (fast_scan_i8_single_simd(q.nbits)) {
        const scan_fn f = q.nbits == 1 ? scan_i8_avx2<1>
                : q.nbits == 2         ? scan_i8_avx2<2>
                                       : scan_i8_avx2<4>;
        return f(codes, stride, n, factors_offset, q, l2, threshold, dis_out, pos_out);
    }
#endif
    return scan_i8_scalar(codes, stride, n, factors_offset, q, l2, threshold, dis_out, pos_out);
}

void decode_i8(const uint8_t* codes, size_t stride, size_t n, const QueryI8& q, uint8_t* rows) {
#if defined(__x86_64__)
    if (fast_scan_i8_simd()) {
        (kHasVbmi ? decode_for<true>(q.nbits) : decode_for<false>(q.nbits))(
                codes, stride, n, q, rows);
        return;
    }
#endif
    decode_scalar(codes, stride, n, q, rows);
}

void load_factors(
        const uint8_t* codes,
        size_t stride,
        size_t n,
        size_t offset,
        float* ipf,
        float* norm) {
#if defined(__x86_64__)
    if (fast_scan_i8_simd()) {
        load_factors_avx512(codes, stride, n, offset, ipf, norm);
        return;
    }
#endif
    load_factors_scalar(codes, stride, n, offset, ipf, norm);
}

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
        CandidateI8* out) {
#if defined(__x86_64__)
    if (fast_scan_i8_simd()) {
        return scan_panels_avx512(rows, ipf, norm, n, p, panel0, npan, l2, thresholds, out);
    }
#endif
    return scan_panels_scalar(rows, ipf, norm, n, p, panel0, npan, l2, thresholds, out);
}

} // namespace tq_kernels
} // namespace faiss
