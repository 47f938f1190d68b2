// Seeded random orthogonal transforms used by the codec.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace faiss {

/** The rotation Pi of TurboQuant: y = Pi x with Pi a random orthogonal matrix.
 *
 * STRUCTURED (default): `rounds` rounds of  permute -> flip signs -> normalised
 *   Walsh-Hadamard transform on x[0:p] -> (if p < d) the same on x[d-p:d], with p the
 *   largest power of two <= d. O(d log d) per vector, exactly orthogonal for any d.
 * DENSE: a d x d Haar-random orthogonal matrix (Gaussian + Gram-Schmidt), O(d^2).
 *
 * Everything is generated from `seed` with a generator whose output is fixed by the
 * C++ standard (mt19937_64) plus our own integer -> float mappings, so the same seed
 * gives the same rotation on every platform: shards encoded anywhere are compatible.
 */
struct TQRotation {
    enum Kind : int { STRUCTURED = 0, DENSE = 1 };

    size_t d = 0;
    int kind = STRUCTURED;
    int rounds = 0;
    uint64_t seed = 0;

    /// STRUCTURED: rounds * d permutation indices (gather: x'[i] = x[perm[i]])
    std::vector<int32_t> perms;
    /// STRUCTURED: rounds * d signs (+1 / -1)
    std::vector<float> signs;
    /// DENSE: d * d row-major matrix
    std::vector<float> matrix;

    TQRotation() = default;
    TQRotation(size_t d, int kind, int rounds, uint64_t seed);

    /// y = Pi x for n vectors (x and y may not alias)
    void apply(size_t n, const float* x, float* y) const;
    /// x = Pi^T y for n vectors
    void apply_transpose(size_t n, const float* y, float* x) const;

    /** Rotate 8 vectors at once in "SoA" layout (x[i * 8 + lane] is coordinate i of
     * vector `lane`), in place; tmp holds d * 8 floats. Every lane sees exactly the
     * operations of apply(), so results are bit-identical, but each butterfly
     * works on 8 vectors with one SIMD instruction. DENSE rotations are not
     * supported here (they go through BLAS). */
    void apply_soa8(float* x, float* tmp) const;

    /// largest power of two <= d (the Hadamard block size)
    size_t block_size() const;
};

/// in-place normalised Walsh-Hadamard transform of length p (a power of 2)
void tq_fwht_normalized(float* x, size_t p);

} // namespace faiss
