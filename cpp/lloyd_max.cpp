#include "lloyd_max.h"

#include <algorithm>
#include <cmath>

#include <faiss/impl/FaissAssert.h>

namespace faiss {

namespace {

// Discretised density of u = sqrt(d) sin(theta): sorted sample points with weights.
struct Grid {
    std::vector<double> u, w_prefix, wu_prefix, wuu_prefix;
};

Grid make_grid(size_t d) {
    // d = 1 puts all mass on +-1 (a non-integrable density); the arcsine law of d = 2
    // is the closest proper density and gives centroids that still separate +-1.
    const double e = d >= 2 ? double(d) - 2.0 : 0.0;
    // Cut the tails where the density falls below 1e-30 of its peak.
    const double theta_max =
            e > 0 ? std::min(M_PI / 2, std::acos(std::exp(std::log(1e-30) / e)))
                  : M_PI / 2;
    const size_t n = 1 << 18;
    const double scale = std::sqrt(double(d));
    Grid g;
    g.u.resize(n);
    g.w_prefix.assign(n + 1, 0);
    g.wu_prefix.assign(n + 1, 0);
    g.wuu_prefix.assign(n + 1, 0);
    for (size_t k = 0; k < n; k++) {
        double theta = -theta_max + (k + 0.5) * (2 * theta_max / n);
        double w = e > 0 ? std::exp(e * std::log(std::cos(theta))) : 1.0;
        double u = scale * std::sin(theta);
        g.u[k] = u;
        g.w_prefix[k + 1] = g.w_prefix[k] + w;
        g.wu_prefix[k + 1] = g.wu_prefix[k] + w * u;
        g.wuu_prefix[k + 1] = g.wuu_prefix[k] + w * u * u;
    }
    return g;
}

// index of the first grid point with u > t
size_t upper(const Grid& g, double t) {
    return std::upper_bound(g.u.begin(), g.u.end(), t) - g.u.begin();
}

} // namespace

LloydMaxCodebook::LloydMaxCodebook(size_t d, int nbits) : d(d), nbits(nbits) {
    FAISS_THROW_IF_NOT_FMT(
            nbits >= 1 && nbits <= 8, "TurboQuant: nbits=%d must be in 1..8", nbits);
    FAISS_THROW_IF_NOT_MSG(d >= 1, "TurboQuant: dimension must be >= 1");
    const Grid g = make_grid(d);
    const size_t K = size_t(1) << nbits;
    const size_t n = g.u.size();
    const double total = g.w_prefix[n];

    // Start from the centroids of equal-probability cells.
    std::vector<double> c(K), b(K - 1);
    {
        size_t k0 = 0;
        for (size_t j = 0; j < K; j++) {
            double target = total * (j + 1) / K;
            size_t k1 = std::lower_bound(
                                g.w_prefix.begin() + 1, g.w_prefix.end(), target) -
                    g.w_prefix.begin();
            k1 = std::max(std::min(k1, n), k0 + 1);
            double w = g.w_prefix[k1] - g.w_prefix[k0];
            c[j] = w > 0 ? (g.wu_prefix[k1] - g.wu_prefix[k0]) / w
                         : g.u[std::min(k0, n - 1)];
            k0 = k1;
        }
    }
    for (int it = 0; it < 2000; it++) {
        for (size_t j = 0; j + 1 < K; j++) {
            b[j] = 0.5 * (c[j] + c[j + 1]);
        }
        double delta = 0;
        size_t k0 = 0;
        for (size_t j = 0; j < K; j++) {
            size_t k1 = j + 1 < K ? upper(g, b[j]) : n;
            double w = g.w_prefix[k1] - g.w_prefix[k0];
            if (w > 0) {
                double cj = (g.wu_prefix[k1] - g.wu_prefix[k0]) / w;
                delta = std::max(delta, std::fabs(cj - c[j]));
                c[j] = cj;
            }
            k0 = k1;
        }
        // The density is even: keep the codebook exactly symmetric.
        for (size_t j = 0; j < K / 2; j++) {
            double s = 0.5 * (c[K - 1 - j] - c[j]);
            c[j] = -s;
            c[K - 1 - j] = s;
        }
        if (delta < 1e-12) {
            break;
        }
    }
    for (size_t j = 0; j + 1 < K; j++) {
        b[j] = 0.5 * (c[j] + c[j + 1]);
    }
    // Expected squared error: sum over cells of E[(u - c_j)^2].
    mse = 0;
    size_t k0 = 0;
    for (size_t j = 0; j < K; j++) {
        size_t k1 = j + 1 < K ? upper(g, b[j]) : n;
        double w = g.w_prefix[k1] - g.w_prefix[k0];
        double wu = g.wu_prefix[k1] - g.wu_prefix[k0];
        double wuu = g.wuu_prefix[k1] - g.wuu_prefix[k0];
        mse += wuu - 2 * c[j] * wu + c[j] * c[j] * w;
        k0 = k1;
    }
    mse /= total;
    centroids.resize(K);
    boundaries.resize(K - 1);
    for (size_t j = 0; j < K; j++) {
        centroids[j] = float(c[j]);
    }
    for (size_t j = 0; j + 1 < K; j++) {
        boundaries[j] = float(b[j]);
    }
}

} // namespace faiss
