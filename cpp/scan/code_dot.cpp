#include "code_dot.h"

#include <faiss/impl/FaissAssert.h>

namespace faiss {
namespace tq_kernels {

code_dot_fn get_code_dot(int nbits) {
    switch (nbits) {
        case 1: return code_dot<1>;
        case 2: return code_dot<2>;
        case 3: return code_dot<3>;
        case 4: return code_dot<4>;
        case 5: return code_dot<5>;
        case 6: return code_dot<6>;
        case 7: return code_dot<7>;
        case 8: return code_dot<8>;
    }
    FAISS_THROW_FMT("TurboQuant: nbits=%d must be in 1..8", nbits);
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
