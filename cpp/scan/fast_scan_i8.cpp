#include "fast_scan_i8.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "code_dot.h"

namespace faiss {
namespace tq_kernels {

bool fast_scan_i8_available() {
#if defined(__x86_64__)
    static const bool has_vnni = [] {
        __builtin_cpu_init();
        return bool(__builtin_cpu_supports("avx512vnni"));
    }();
    return simd_level() >= 2 && has_vnni;
#else
    return false;
#endif
}

void prepare_query_i8(const float* qrot, const float* centroids16, size_t d, QueryI8& out) {
    float qmax = 0, cmax = 0;
    for (size_t i = 0; i < d; i++) {
        qmax = std::max(qmax, std::fabs(qrot[i]));
    }
    for (int j = 0; j < 16; j++) {
        cmax = std::max(cmax, std::fabs(centroids16[j]));
    }
    const float qscale = qmax > 0 ? 127.0f / qmax : 0.0f;
    const float cscale = cmax > 0 ? 127.0f / cmax : 0.0f;
    for (int j = 0; j < 16; j++) {
        out.table[j] = uint8_t(int(std::lrint(centroids16[j] * cscale)) + 128);
    }
    out.q8.assign(d, 0);
    int32_t sum = 0;
    const size_t full = d / 64 * 64;
    for (size_t i = 0; i < d; i++) {
        int8_t v = int8_t(std::lrint(qrot[i] * qscale));
        sum += v;
        size_t pos = i;
        if (i < full) { // nibble order inside the group of 64
            size_t g = i / 64 * 64, r = i % 64;
            pos = g + (r % 2 == 0 ? r / 2 : 32 + r / 2);
        }
        out.q8[pos] = v;
    }
    out.bias = 128 * sum;
    out.inv_scale = qscale > 0 && cscale > 0 ? 1.0f / (qscale * cscale) : 0.0f;
}

namespace {

// exact integer dot of the coordinates from `from` to d (natural order)
int32_t dot_tail(const uint8_t* code, const QueryI8& q, size_t from, size_t d) {
    int32_t acc = 0;
    for (size_t i = from; i < d; i++) {
        uint8_t byte = code[i / 2];
        int c = i % 2 == 0 ? (byte & 15) : (byte >> 4);
        acc += int32_t(q.table[c]) * q.q8[i];
    }
    return acc;
}

void code_dot_many_i8_scalar(
        const uint8_t* codes,
        size_t stride,
        size_t n,
        const QueryI8& q,
        size_t d,
        float* out) {
    const size_t full = d / 64 * 64;
    for (size_t v = 0; v < n; v++) {
        const uint8_t* code = codes + v * stride;
        int32_t acc = 0;
        for (size_t g = 0; g < full; g += 64) {
            const uint8_t* b = code + g / 2;
            const int8_t* qg = q.q8.data() + g;
            for (int j = 0; j < 32; j++) {
                acc += int32_t(q.table[b[j] & 15]) * qg[j];
                acc += int32_t(q.table[b[j] >> 4]) * qg[32 + j];
            }
        }
        acc += dot_tail(code, q, full, d);
        out[v] = float(acc - q.bias) * q.inv_scale;
    }
}

#if defined(__x86_64__)
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) void code_dot_many_i8_vnni(
        const uint8_t* codes,
        size_t stride,
        size_t n,
        const QueryI8& q,
        size_t d,
        float* out) {
    const size_t full = d / 64 * 64;
    const __m512i table = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i*)q.table));
    const __m256i low4 = _mm256_set1_epi8(15);
    size_t v = 0;
    for (; v + 2 <= n; v += 2) { // two codes in flight
        const uint8_t* c0 = codes + v * stride;
        const uint8_t* c1 = c0 + stride;
        __m512i a0 = _mm512_setzero_si512(), a1 = _mm512_setzero_si512();
        for (size_t g = 0; g < full; g += 64) {
            __m512i qv = _mm512_loadu_si512(q.q8.data() + g);
            __m256i x0 = _mm256_loadu_si256((const __m256i*)(c0 + g / 2));
            __m256i x1 = _mm256_loadu_si256((const __m256i*)(c1 + g / 2));
            __m512i n0 = _mm512_inserti64x4(
                    _mm512_zextsi256_si512(_mm256_and_si256(x0, low4)),
                    _mm256_and_si256(_mm256_srli_epi16(x0, 4), low4),
                    1);
            __m512i n1 = _mm512_inserti64x4(
                    _mm512_zextsi256_si512(_mm256_and_si256(x1, low4)),
                    _mm256_and_si256(_mm256_srli_epi16(x1, 4), low4),
                    1);
            a0 = _mm512_dpbusd_epi32(a0, _mm512_shuffle_epi8(table, n0), qv);
            a1 = _mm512_dpbusd_epi32(a1, _mm512_shuffle_epi8(table, n1), qv);
        }
        int32_t s0 = _mm512_reduce_add_epi32(a0) + dot_tail(c0, q, full, d);
        int32_t s1 = _mm512_reduce_add_epi32(a1) + dot_tail(c1, q, full, d);
        out[v] = float(s0 - q.bias) * q.inv_scale;
        out[v + 1] = float(s1 - q.bias) * q.inv_scale;
    }
    if (v < n) {
        code_dot_many_i8_scalar(codes + v * stride, stride, n - v, q, d, out + v);
    }
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) void code_dot_many_i8_x4_vnni(
        const uint8_t* codes,
        size_t stride,
        size_t n,
        const QueryI8* const* q,
        size_t d,
        float* const* out) {
    const size_t full = d / 64 * 64;
    const __m512i table =
            _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i*)q[0]->table));
    const __m256i low4 = _mm256_set1_epi8(15);
    const int8_t* q0 = q[0]->q8.data();
    const int8_t* q1 = q[1]->q8.data();
    const int8_t* q2 = q[2]->q8.data();
    const int8_t* q3 = q[3]->q8.data();
    for (size_t v = 0; v < n; v++) {
        const uint8_t* c = codes + v * stride;
        __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
        for (size_t g = 0; g < full; g += 64) {
            __m256i x = _mm256_loadu_si256((const __m256i*)(c + g / 2));
            __m512i nib = _mm512_inserti64x4(
                    _mm512_zextsi256_si512(_mm256_and_si256(x, low4)),
                    _mm256_and_si256(_mm256_srli_epi16(x, 4), low4),
                    1);
            __m512i vals = _mm512_shuffle_epi8(table, nib);
            a0 = _mm512_dpbusd_epi32(a0, vals, _mm512_loadu_si512(q0 + g));
            a1 = _mm512_dpbusd_epi32(a1, vals, _mm512_loadu_si512(q1 + g));
            a2 = _mm512_dpbusd_epi32(a2, vals, _mm512_loadu_si512(q2 + g));
            a3 = _mm512_dpbusd_epi32(a3, vals, _mm512_loadu_si512(q3 + g));
        }
        const __m512i acc[4] = {a0, a1, a2, a3};
        for (int j = 0; j < 4; j++) {
            int32_t sum = _mm512_reduce_add_epi32(acc[j]) + dot_tail(c, *q[j], full, d);
            out[j][v] = float(sum - q[j]->bias) * q[j]->inv_scale;
        }
    }
}
#endif

} // namespace

void code_dot_many_i8_x4(
        const uint8_t* codes,
        size_t stride,
        size_t n,
        const QueryI8* const* q,
        size_t d,
        float* const* out) {
#if defined(__x86_64__)
    if (fast_scan_i8_available()) {
        code_dot_many_i8_x4_vnni(codes, stride, n, q, d, out);
        return;
    }
#endif
    for (int j = 0; j < 4; j++) {
        code_dot_many_i8_scalar(codes, stride, n, *q[j], d, out[j]);
    }
}

void code_dot_many_i8(
        const uint8_t* codes,
        size_t stride,
        size_t n,
        const QueryI8& q,
        size_t d,
        float* out) {
#if defined(__x86_64__)
    if (fast_scan_i8_available()) {
        code_dot_many_i8_vnni(codes, stride, n, q, d, out);
        return;
    }
#endif
    code_dot_many_i8_scalar(codes, stride, n, q, d, out);
}

} // namespace tq_kernels
} // namespace faiss
