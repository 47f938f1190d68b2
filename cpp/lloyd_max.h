// Lloyd-Max scalar codebooks for one coordinate of a random unit vector.
#pragma once

#include <cstddef>
#include <vector>

namespace faiss {

/** Optimal b-bit scalar quantiser (Lloyd-Max) for one coordinate t of a vector drawn
 * uniformly from the unit sphere in R^d, whose density is proportional to
 * (1 - t^2)^((d - 3) / 2). Values are expressed in the scaled variable u = sqrt(d) * t,
 * which is close to N(0, 1) for large d, so that one set of numbers serves every d.
 *
 * The codebook is computed here (no tables): the density is integrated on a fine grid
 * in theta with t = sin(theta), where it becomes cos(theta)^(d - 2), and Lloyd's
 * iterations (boundaries = midpoints, centroids = conditional means) run to convergence.
 */
struct LloydMaxCodebook {
    size_t d = 0;
    int nbits = 0;
    std::vector<float> centroids;  ///< 2^nbits increasing values (u-space)
    std::vector<float> boundaries; ///< 2^nbits - 1 midpoints between centroids
    double mse = 0;                ///< expected squared error per coordinate (u-space)

    LloydMaxCodebook() = default;
    LloydMaxCodebook(size_t d, int nbits);
};

} // namespace faiss
