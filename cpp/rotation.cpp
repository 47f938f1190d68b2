#include "rotation.h"

#include <cmath>
#include <random>

#include <faiss/impl/FaissAssert.h>

#include "blas.h"


namespace faiss {

namespace {

// uniform double in [0, 1) from the top 53 bits
double uniform01(std::mt19937_64& rng) {
    return double(rng() >> 11) * (1.0 / 9007199254740992.0);
}

double gaussian(std::mt19937_64& rng) {
    // Box-Muller, using one of the pair: simple and platform-independent.
    double u1 = uniform01(rng), u2 = uniform01(rng);
    return std::sqrt(-2.0 * std::log(1.0 - u1)) * std::cos(2 * M_PI * u2);
}

} // namespace

// the query path rotates one vector at a time: let the compiler use wide vectors for the
// long butterflies (additions only, so the results do not depend on the width)
__attribute__((target_clones("avx512f", "avx2", "default"))) void tq_fwht_normalized(
        float* x,
        size_t p) {
    size_t h = 1;
    if (p >= 8) { // levels 1, 2, 4 as one 8-point transform per block, in registers
        for (size_t i = 0; i < p; i += 8) {
            float* v = x + i;
            float a0 = v[0] + v[1], a1 = v[0] - v[1], a2 = v[2] + v[3], a3 = v[2] - v[3];
            float a4 = v[4] + v[5], a5 = v[4] - v[5], a6 = v[6] + v[7], a7 = v[6] - v[7];
            float b0 = a0 + a2, b2 = a0 - a2, b1 = a1 + a3, b3 = a1 - a3;
            float b4 = a4 + a6, b6 = a4 - a6, b5 = a5 + a7, b7 = a5 - a7;
            v[0] = b0 + b4, v[4] = b0 - b4, v[1] = b1 + b5, v[5] = b1 - b5;
            v[2] = b2 + b6, v[6] = b2 - b6, v[3] = b3 + b7, v[7] = b3 - b7;
        }
        h = 8;
    }
    for (; h < p && h < 8; h *= 2) {
        for (size_t i = 0; i < p; i += 2 * h) {
            for (size_t j = i; j < i + h; j++) {
                float a = x[j], b = x[j + h];
                x[j] = a + b;
                x[j + h] = a - b;
            }
        }
    }
    for (; h < p; h *= 2) { // j runs over >= 8 consecutive floats
        for (size_t i = 0; i < p; i += 2 * h) {
            float* __restrict a = x + i;
            float* __restrict b = x + i + h;
            for (size_t j = 0; j < h; j++) {
                float u = a[j], v = b[j];
                a[j] = u + v;
                b[j] = u - v;
            }
        }
    }
    const float s = float(1.0 / std::sqrt(double(p)));
    for (size_t j = 0; j < p; j++) {
        x[j] *= s;
    }
}

namespace {

#define TQ_SIMD_CLONES __attribute__((target_clones("avx2", "default")))

TQ_SIMD_CLONES void fwht_soa8(float* x, size_t p) {
    for (size_t h = 1; h < p; h *= 2) {
        for (size_t i = 0; i < p; i += 2 * h) {
            for (size_t j = i; j < i + h; j++) {
                float* a = x + j * 8;
                float* b = x + (j + h) * 8;
                for (int l = 0; l < 8; l++) {
                    float u = a[l], v = b[l];
                    a[l] = u + v;
                    b[l] = u - v;
                }
            }
        }
    }
    const float s = float(1.0 / std::sqrt(double(p)));
    for (size_t j = 0; j < p * 8; j++) {
        x[j] *= s;
    }
}

TQ_SIMD_CLONES void permute_signs_soa8(
        const float* x,
        float* out,
        const int32_t* perm,
        const float* sg,
        size_t d) {
    for (size_t i = 0; i < d; i++) {
        const float* src = x + size_t(perm[i]) * 8;
        float* dst = out + i * 8;
        for (int l = 0; l < 8; l++) {
            dst[l] = src[l] * sg[i];
        }
    }
}

} // namespace

void TQRotation::apply_soa8(float* x, float* tmp) const {
    FAISS_THROW_IF_NOT_MSG(kind == STRUCTURED, "apply_soa8: structured rotations only");
    const size_t p = block_size();
    for (int r = 0; r < rounds; r++) {
        permute_signs_soa8(
                x, tmp, perms.data() + size_t(r) * d, signs.data() + size_t(r) * d, d);
        std::copy(tmp, tmp + d * 8, x);
        fwht_soa8(x, p);
        if (p < d) {
            fwht_soa8(x + (d - p) * 8, p);
        }
    }
}

size_t TQRotation::block_size() const {
    size_t p = 1;
    while (p * 2 <= d) {
        p *= 2;
    }
    return p;
}

TQRotation::TQRotation(size_t d, int kind, int rounds, uint64_t seed)
        : d(d), kind(kind), rounds(rounds), seed(seed) {
    FAISS_THROW_IF_NOT_MSG(d >= 1, "TurboQuant: dimension must be >= 1");
    std::mt19937_64 rng(seed);
    if (kind == STRUCTURED) {
        FAISS_THROW_IF_NOT_FMT(
                rounds >= 1 && rounds <= 16,
                "TurboQuant: rotation rounds=%d must be in 1..16",
                rounds);
        perms.resize(size_t(rounds) * d);
        signs.resize(size_t(rounds) * d);
        for (int r = 0; r < rounds; r++) {
            int32_t* perm = perms.data() + size_t(r) * d;
            for (size_t i = 0; i < d; i++) {
                perm[i] = int32_t(i);
            }
            for (size_t i = d; i > 1; i--) { // Fisher-Yates
                size_t j = size_t(rng() % i);
                std::swap(perm[i - 1], perm[j]);
            }
            float* sg = signs.data() + size_t(r) * d;
            for (size_t i = 0; i < d; i++) {
                sg[i] = (rng() >> 63) ? -1.0f : 1.0f;
            }
        }
    } else if (kind == DENSE) {
        // Gram-Schmidt is O(d^3): beyond 1024 use the structured rotation
        FAISS_THROW_IF_NOT_MSG(
                d <= 1024, "TurboQuant: dense rotation limited to d <= 1024");
        // Haar-random orthogonal matrix: Gram-Schmidt (twice, for stability) on rows of
        // a Gaussian matrix.
        std::vector<double> m(d * d);
        for (auto& v : m) {
            v = gaussian(rng);
        }
        for (size_t i = 0; i < d; i++) {
            double* ri = m.data() + i * d;
            for (int pass = 0; pass < 2; pass++) {
                for (size_t j = 0; j < i; j++) {
                    const double* rj = m.data() + j * d;
                    double dot = 0;
                    for (size_t t = 0; t < d; t++) {
                        dot += ri[t] * rj[t];
                    }
                    for (size_t t = 0; t < d; t++) {
                        ri[t] -= dot * rj[t];
                    }
                }
            }
            double nrm = 0;
            for (size_t t = 0; t < d; t++) {
                nrm += ri[t] * ri[t];
            }
            nrm = std::sqrt(nrm);
            for (size_t t = 0; t < d; t++) {
                ri[t] /= nrm;
            }
        }
        matrix.resize(d * d);
        for (size_t i = 0; i < d * d; i++) {
            matrix[i] = float(m[i]);
        }
    } else {
        FAISS_THROW_FMT("TurboQuant: unknown rotation kind %d", kind);
    }
}

void TQRotation::apply(size_t n, const float* x, float* y) const {
    if (n == 0) {
        return;
    }
    if (kind == DENSE) {
        // Y (n x d, row-major) = X R^T: in column-major terms Y^T = R X^T.
        int di = int(d), ni = int(n);
        float one = 1, zero = 0;
        sgemm_("T", "N", &di, &ni, &di, &one, matrix.data(), &di, x, &di, &zero, y, &di);
        return;
    }
    const size_t p = block_size();
    std::vector<float> tmp(d);
    for (size_t v = 0; v < n; v++) {
        float* yv = y + v * d;
        std::copy(x + v * d, x + (v + 1) * d, yv);
        for (int r = 0; r < rounds; r++) {
            const int32_t* perm = perms.data() + size_t(r) * d;
            const float* sg = signs.data() + size_t(r) * d;
            for (size_t i = 0; i < d; i++) {
                tmp[i] = yv[perm[i]] * sg[i];
            }
            std::copy(tmp.begin(), tmp.end(), yv);
            tq_fwht_normalized(yv, p);
            if (p < d) {
                tq_fwht_normalized(yv + d - p, p);
            }
        }
    }
}

void TQRotation::apply_transpose(size_t n, const float* y, float* x) const {
    if (n == 0) {
        return;
    }
    if (kind == DENSE) {
        // X = Y R: column-major X^T = R^T Y^T.
        int di = int(d), ni = int(n);
        float one = 1, zero = 0;
        sgemm_("N", "N", &di, &ni, &di, &one, matrix.data(), &di, y, &di, &zero, x, &di);
        return;
    }
    const size_t p = block_size();
    std::vector<float> tmp(d);
    for (size_t v = 0; v < n; v++) {
        float* xv = x + v * d;
        std::copy(y + v * d, y + (v + 1) * d, tmp.begin());
        for (int r = rounds - 1; r >= 0; r--) {
            const int32_t* perm = perms.data() + size_t(r) * d;
            const float* sg = signs.data() + size_t(r) * d;
            if (p < d) {
                tq_fwht_normalized(tmp.data() + d - p, p);
            }
            tq_fwht_normalized(tmp.data(), p);
            for (size_t i = 0; i < d; i++) {
                xv[perm[i]] = tmp[i] * sg[i];
            }
            std::copy(xv, xv + d, tmp.begin());
        }
    }
}

} // namespace faiss
