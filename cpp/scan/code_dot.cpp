#include "code_dot.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <string>

#include <faiss/impl/FaissAssert.h>

namespace faiss {
namespace tq_kernels {

namespace {

int detect_simd_level() {
    int cap = 2; // TQ_SIMD=scalar|avx2 caps the level (tests compare the paths)
    if (const char* env = std::getenv("TQ_SIMD")) {
        std::string v(env);
        cap = v == "scalar" ? 0 : v == "avx2" ? 1 : 2;
    }
    int level = 0;
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("bmi2")) {
        level = 1;
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512vl")) {
            level = 2;
        }
    }
#endif
    return std::min(level, cap);
}

std::atomic<int>& level_ref() {
    static std::atomic<int> level(detect_simd_level());
    return level;
}

} // namespace

int simd_level() {
    return level_ref().load();
}

int set_simd_level(int level) {
    int best = detect_simd_level();
    level_ref().store(level < 0 ? best : std::min(level, best));
    return simd_level();
}

code_dot_fn get_code_dot(int nbits) {
    FAISS_THROW_IF_NOT_FMT(
            nbits >= 1 && nbits <= 8, "TurboQuant: nbits=%d must be in 1..8", nbits);
#if defined(__x86_64__)
    if (simd_level() >= 2) {
        return get_code_dot_avx512(nbits);
    }
    if (simd_level() >= 1) {
        return get_code_dot_avx2(nbits);
    }
#endif
    switch (nbits) {
        case 1: return code_dot_scalar<1>;
        case 2: return code_dot_scalar<2>;
        case 3: return code_dot_scalar<3>;
        case 4: return code_dot_scalar<4>;
        case 5: return code_dot_scalar<5>;
        case 6: return code_dot_scalar<6>;
        case 7: return code_dot_scalar<7>;
        default: return code_dot_scalar<8>;
    }
}

code_dot_many_fn get_code_dot_many(int nbits) {
    FAISS_THROW_IF_NOT_FMT(
            nbits >= 1 && nbits <= 8, "TurboQuant: nbits=%d must be in 1..8", nbits);
#if defined(__x86_64__)
    if (simd_level() >= 2) {
        return get_code_dot_many_avx512(nbits);
    }
    if (simd_level() >= 1) {
        return get_code_dot_many_avx2(nbits);
    }
#endif
    switch (nbits) {
        case 1: return code_dot_many_scalar<1>;
        case 2: return code_dot_many_scalar<2>;
        case 3: return code_dot_many_scalar<3>;
        case 4: return code_dot_many_scalar<4>;
        case 5: return code_dot_many_scalar<5>;
        case 6: return code_dot_many_scalar<6>;
        case 7: return code_dot_many_scalar<7>;
        default: return code_dot_many_scalar<8>;
    }
}

sum_set_bits_fn get_sum_set_bits() {
#if defined(__x86_64__)
    if (simd_level() >= 2) {
        return sum_set_bits_avx512;
    }
    if (simd_level() >= 1) {
        return sum_set_bits_avx2;
    }
#endif
    return sum_set_bits_scalar;
}

void unpack_codes(const uint8_t* code, size_t d, int nbits, uint8_t* out) {
    const uint64_t mask = (uint64_t(1) << nbits) - 1;
    for (size_t i = 0; i < d; i += 8) {
        size_t cnt = d - i < 8 ? d - i : 8;
        uint64_t w = load_bytes(code, (cnt * nbits + 7) / 8);
        code += nbits;
        for (size_t j = 0; j < cnt; j++) {
            out[i + j] = uint8_t((w >> (j * nbits)) & mask);
        }
    }
}

void pack_codes(const uint8_t* in, size_t d, int nbits, uint8_t* code) {
    for (size_t i = 0; i < d; i += 8) {
        size_t cnt = d - i < 8 ? d - i : 8;
        uint64_t w = 0;
        for (size_t j = 0; j < cnt; j++) {
            w |= uint64_t(in[i + j]) << (j * nbits);
        }
        std::memcpy(code, &w, (cnt * nbits + 7) / 8);
        code += nbits;
    }
}

} // namespace tq_kernels
} // namespace faiss
