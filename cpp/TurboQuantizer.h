// The TurboQuant codec: one implementation used by every index type.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "lloyd_max.h"
#include "rotation.h"

namespace faiss {

/** How the stored per-vector inner-product factor is chosen (see TurboQuantizer). */
enum TQCorrection : int {
    TQ_CORRECTION_PLAIN = 0,     ///< paper-faithful: factor = ||x|| / sqrt(d)
    TQ_CORRECTION_UNBIASED = 1,  ///< RaBitQ / EDEN renormalisation: 1 / <y_hat, y>
    TQ_CORRECTION_LSQ = 2,       ///< least-squares projection: <y_hat, y> / ||y_hat||^2
};

/** TurboQuant (Zandieh et al., arXiv 2504.19874) with per-vector corrections.
 *
 * Encoding x (d floats):
 *   norm = ||x|| (double accumulation);   y = Pi x (random rotation);
 *   u_i = y_i * (sqrt(d) / norm)   (~N(0,1) coordinates of the rotated unit vector);
 *   code_i = #{ j : u_i > boundary_j }   (b-bit Lloyd-Max code, bit-packed);
 *   ip_factor so that <q, x> ~= ip_factor * sum_i (Pi q)_i * centroid[code_i];
 *   optional QJL stage on the residual r = y - ip_factor * centroid[code]:
 *     m sign bits of Psi r (Psi: independent structured rotations) and
 *     qjl_factor = ||r|| / (m E|s_1|), giving the unbiased estimate
 *     <q, r> ~= qjl_factor * sum_k sign_k (Psi Pi q)_k.
 *
 * Code layout (code_size bytes per vector, unaligned):
 *   [ceil(d*b/8) bytes: codes, bit i*b.. of a little-endian bit stream]
 *   [ceil(m/8) bytes: QJL sign bits]  [float norm] [float ip_factor] [float qjl_factor if m>0]
 */
struct TurboQuantizer {
    size_t d = 0;
    int nbits = 4;
    size_t qjl_m = 0;
    uint64_t seed = 42;
    int rotation_kind = TQRotation::STRUCTURED;
    int rotation_rounds = 3;
    int correction = TQ_CORRECTION_UNBIASED;
    /** Per-vector grid scale search: the number of quantisation passes (1 = plain
     * nearest-centroid codes). Pass k quantises the normalised coordinates scaled by a
     * t near 1 (each vector walks t = 1, 0.95, then 0.9 or 1.05, ...; see encode) and
     * each vector keeps the codes whose centroid vector has the largest cosine with it,
     * i.e. the smallest error of the unbiased inner-product estimate. Only encoding
     * changes: codes and estimator stay the same, so search costs nothing more. Ignored
     * for 1-bit codes (a sign does not scale). */
    int scale_search = 3;

    // ---- derived state, rebuilt by init() ----
    LloydMaxCodebook codebook;
    /// the centroids zero-padded to a whole SIMD table (what the scan kernels read)
    std::vector<float> centroid_table;
    TQRotation rotation;
    std::vector<TQRotation> qjl_rotations; ///< ceil(m / d) rotations of the residual
    size_t mse_bytes = 0, qjl_bytes = 0, code_size = 0;
    double qjl_scale = 0; ///< 1 / (m * E|s_1|) for s uniform on the unit sphere of R^d

    TurboQuantizer() = default;
    TurboQuantizer(size_t d, int nbits, size_t qjl_m = 0, uint64_t seed = 42);

    /// validate the parameters and (re)build codebook, rotations and sizes
    void init();

    /// the grid scale of step k of the search (|k| <= 8): float(1 + 0.05 k)
    static float search_scale(int k) {
        return float(1.0 + 0.05 * k);
    }

    /// byte offset of the float factors inside a code
    size_t factors_offset() const {
        return mse_bytes + qjl_bytes;
    }

    /// encode n vectors (rejects NaN / inf with an exception); parallel over vectors
    void encode(size_t n, const float* x, uint8_t* codes) const;
    /// decode n codes to approximate vectors (least-squares scaled reconstruction)
    void decode(size_t n, const uint8_t* codes, float* x) const;

    /// unpack the b-bit codes of one vector into d bytes
    void unpack_codes(const uint8_t* code, uint8_t* out) const;

    /// per-query state: the rotated query and the QJL projections
    struct Query {
        std::vector<float> qrot;     ///< Pi q
        std::vector<float> qjl_proj; ///< Psi Pi q (m values)
        float qjl_proj_sum = 0;      ///< sum of qjl_proj
        float qnorm2 = 0;            ///< ||q||^2
        /// the code_dot kernels for this bit width, chosen once per query
        float (*code_dot)(const uint8_t*, const float*, const float*, size_t) = nullptr;
        void (*code_dot_many)(
                const uint8_t*, size_t, size_t, const float*, const float*, size_t, float*) =
                nullptr;
        float (*sum_set_bits)(const uint8_t*, const float*, size_t) = nullptr;
    };
    void prepare_query(const float* q, Query& query) const;

    /// estimated <q, x> for one code
    float estimate_ip(const Query& query, const uint8_t* code) const;
    /// estimated <q, x> given dot = sum_i (Pi q)_i centroid[code_i] computed elsewhere
    float combine_ip(const Query& query, const uint8_t* code, float dot) const;
    /// estimated distance for the metric (IP: <q, x>; L2: ||q - x||^2)
    float estimate_distance(const Query& query, const uint8_t* code, bool l2) const {
        float ip = estimate_ip(query, code);
        if (!l2) {
            return ip;
        }
        float norm = code_norm(code);
        return query.qnorm2 + norm * norm - 2 * ip;
    }

    /// estimated distances to n consecutive codes (the fast path of every scan)
    void estimate_distances(
            const Query& query,
            const uint8_t* codes,
            size_t n,
            bool l2,
            float* out) const;
    /// turn n code_dot values (in `dots`, overwritten) into distances
    void finish_distances(
            const Query& query,
            const uint8_t* codes,
            size_t n,
            bool l2,
            float* dots) const;

    float code_norm(const uint8_t* code) const;

    /// check that n vectors are all finite; throws naming the first bad one
    void check_finite(size_t n, const float* x, const char* what) const;
};

} // namespace faiss
