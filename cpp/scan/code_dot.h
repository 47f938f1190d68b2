// Distance kernels on packed TurboQuant codes: one implementation per operation, shared
// by the flat index, the IVF scanner and the distance computers.
#pragma once

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

/** sum_i q[i] * centroids[code_i] over the d b-bit codes of one vector.
 * Eight codes of NBITS bits occupy exactly NBITS bytes, so the loop reads one word per
 * group of eight coordinates; eight independent accumulators keep the FP pipeline busy. */
template <int NBITS>
float code_dot(const uint8_t* code, const float* q, const float* centroids, size_t d) {
    constexpr uint64_t mask = (uint64_t(1) << NBITS) - 1;
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    size_t i = 0;
    for (; i + 8 <= d; i += 8) {
        uint64_t w = load_bytes(code, NBITS);
        code += NBITS;
        for (int j = 0; j < 8; j++) {
            acc[j] += q[i + j] * centroids[(w >> (j * NBITS)) & mask];
        }
    }
    if (i < d) {
        size_t rest = d - i;
        uint64_t w = load_bytes(code, (rest * NBITS + 7) / 8);
        for (size_t j = 0; j < rest; j++) {
            acc[j] += q[i + j] * centroids[(w >> (j * NBITS)) & mask];
        }
    }
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
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

/// the code_dot instance for a bit width (1..8)
code_dot_fn get_code_dot(int nbits);

/// unpack d codes of nbits bits into bytes
void unpack_codes(const uint8_t* code, size_t d, int nbits, uint8_t* out);
/// pack d byte codes into nbits-bit codes (code_bytes = ceil(d*nbits/8) bytes written)
void pack_codes(const uint8_t* in, size_t d, int nbits, uint8_t* code);

} // namespace tq_kernels
} // namespace faiss
