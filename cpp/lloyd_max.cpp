#include "lloyd_max.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>

#include <faiss/impl/FaissAssert.h>

namespace faiss {

namespace {

/* Law of one coordinate of a uniform unit vector of R^d, in u = sqrt(d) t, t = sin(theta):
 * the density in theta is cos(theta)^e with e = d - 2, so
 *   P(a < u < b)        = G(theta_b) - G(theta_a),   G(theta) = int cos^e
 *   int_a^b u f(u) du   = sqrt(d) (cos^(e+1) theta_a - cos^(e+1) theta_b) / (e + 1)
 *   f(u)                = cos^(e-1)(theta) / sqrt(d)
 * G is tabulated once (Simpson) and read with cubic Hermite interpolation using its
 * exact derivative, so cell masses are smooth functions of the boundaries and Newton's
 * method on the Lloyd-Max conditions converges to machine precision.
 * d = 1 (two point masses at +-1) uses the arcsine law of d = 2, the closest proper law. */
struct CoordinateLaw {
    double e, scale, theta_max;
    std::vector<double> grid_G;
    double h;
    static constexpr int N = 1 << 16;

    explicit CoordinateLaw(size_t d) {
        e = d >= 2 ? double(d) - 2.0 : 0.0;
        scale = std::sqrt(double(d));
        // beyond theta_max the density is below 1e-300 of its peak
        theta_max = e > 0 ? std::min(M_PI / 2, std::acos(std::exp(std::log(1e-300) / e)))
                          : M_PI / 2;
        h = 2 * theta_max / N;
        grid_G.assign(N + 1, 0);
        for (int k = 0; k < N; k++) { // Simpson on each grid step
            double a = -theta_max + k * h;
            grid_G[k + 1] = grid_G[k] +
                    h / 6 * (dens(a) + 4 * dens(a + h / 2) + dens(a + h));
        }
    }
    double dens(double theta) const {
        double c = std::cos(theta);
        return e > 0 ? std::exp(e * std::log(std::max(c, 1e-300))) : 1.0;
    }
    double theta_of(double u) const {
        double t = std::max(-1.0, std::min(1.0, u / scale));
        return std::max(-theta_max, std::min(theta_max, std::asin(t)));
    }
    double total() const {
        return grid_G[N];
    }
    /// G(theta(u)): mass below u (unnormalised)
    double cdf(double u) const {
        double th = theta_of(u);
        double x = (th + theta_max) / h;
        int k = std::min(N - 1, std::max(0, int(x)));
        double s = x - k, a = -theta_max + k * h;
        double g0 = grid_G[k], g1 = grid_G[k + 1];
        double m0 = dens(a) * h, m1 = dens(a + h) * h;
        double s2 = s * s, s3 = s2 * s;
        return (2 * s3 - 3 * s2 + 1) * g0 + (s3 - 2 * s2 + s) * m0 +
                (-2 * s3 + 3 * s2) * g1 + (s3 - s2) * m1;
    }
    /// int_{-inf}^{u} u' f(u') du' up to a constant (unnormalised)
    double moment(double u) const {
        double c = std::cos(theta_of(u));
        return -scale * std::exp((e + 1) * std::log(std::max(c, 1e-300))) / (e + 1);
    }
    /// density at u (unnormalised, consistent with cdf)
    double pdf(double u) const {
        double th = theta_of(u);
        return dens(th) / (scale * std::max(std::cos(th), 1e-300));
    }
};

// centroids of the cells delimited by b (K - 1 boundaries), and the cell masses
void cell_means(
        const CoordinateLaw& law,
        const std::vector<double>& b,
        std::vector<double>& m,
        std::vector<double>& mass) {
    const size_t K = b.size() + 1;
    double F_prev = 0, M_prev = law.moment(-1e300);
    for (size_t j = 0; j < K; j++) {
        double F = j + 1 < K ? law.cdf(b[j]) : law.total();
        double M = j + 1 < K ? law.moment(b[j]) : law.moment(1e300);
        mass[j] = F - F_prev;
        m[j] = mass[j] > 0 ? (M - M_prev) / mass[j]
                           : (j == 0 ? b[0] : (j + 1 < K ? 0.5 * (b[j - 1] + b[j]) : b[j - 1]));
        F_prev = F;
        M_prev = M;
    }
}

void symmetrize(std::vector<double>& c) {
    const size_t K = c.size();
    for (size_t j = 0; j < K / 2; j++) {
        double s = 0.5 * (c[K - 1 - j] - c[j]);
        c[j] = -s;
        c[K - 1 - j] = s;
    }
}

std::vector<double> solve_lloyd_max(size_t d, int nbits) {
    const CoordinateLaw law(d);
    const size_t K = size_t(1) << nbits;
    std::vector<double> c(K), b(K - 1), m(K), mass(K);
    // start: the means of equal-probability cells of the law itself
    for (size_t j = 0; j + 1 < K; j++) {
        double target = law.total() * (j + 1) / K, lo = -law.scale, hi = law.scale;
        for (int it = 0; it < 200; it++) {
            double mid = 0.5 * (lo + hi);
            (law.cdf(mid) < target ? lo : hi) = mid;
        }
        b[j] = 0.5 * (lo + hi);
    }
    cell_means(law, b, c, mass);
    symmetrize(c);
    auto boundaries = [&]() {
        for (size_t j = 0; j + 1 < K; j++) {
            b[j] = 0.5 * (c[j] + c[j + 1]);
        }
    };
    // a few plain Lloyd iterations, then Newton on F(c) = c - mean_of_cells(c)
    for (int it = 0; it < 50; it++) {
        boundaries();
        cell_means(law, b, m, mass);
        c = m;
        symmetrize(c);
    }
    std::vector<double> lo(K), di(K), up(K), rhs(K);
    for (int it = 0; it < 100; it++) {
        boundaries();
        cell_means(law, b, m, mass);
        double err = 0;
        for (size_t j = 0; j < K; j++) {
            rhs[j] = c[j] - m[j];
            err = std::max(err, std::fabs(rhs[j]));
        }
        if (err < 1e-13) {
            break;
        }
        // d m_j / d b_j (upper) = f(b_j)(b_j - m_j)/mass_j; lower: f(b_{j-1})(m_j - b_{j-1})/mass_j
        for (size_t j = 0; j < K; j++) {
            double dup = 0, dlo = 0;
            if (mass[j] > 0) {
                if (j + 1 < K) dup = law.pdf(b[j]) * (b[j] - m[j]) / mass[j];
                if (j > 0) dlo = law.pdf(b[j - 1]) * (m[j] - b[j - 1]) / mass[j];
            }
            // F_j = c_j - m_j; b_{j-1} = (c_{j-1}+c_j)/2, b_j = (c_j+c_{j+1})/2
            lo[j] = -0.5 * dlo;
            di[j] = 1 - 0.5 * dlo - 0.5 * dup;
            up[j] = -0.5 * dup;
        }
        // Thomas algorithm for the tridiagonal system J delta = rhs
        std::vector<double> cp(K), dp(K);
        cp[0] = up[0] / di[0];
        dp[0] = rhs[0] / di[0];
        for (size_t j = 1; j < K; j++) {
            double den = di[j] - lo[j] * cp[j - 1];
            cp[j] = up[j] / den;
            dp[j] = (rhs[j] - lo[j] * dp[j - 1]) / den;
        }
        std::vector<double> delta(K);
        delta[K - 1] = dp[K - 1];
        for (size_t j = K - 1; j-- > 0;) {
            delta[j] = dp[j] - cp[j] * delta[j + 1];
        }
        std::vector<double> cn(K);
        bool ok = true;
        for (size_t j = 0; j < K; j++) {
            cn[j] = c[j] - delta[j];
            ok = ok && std::isfinite(cn[j]) && (j == 0 || cn[j] > cn[j - 1]);
        }
        c = ok ? cn : m; // fall back to a Lloyd step if Newton leaves the valid region
        symmetrize(c);
    }
    return c;
}

} // namespace

LloydMaxCodebook::LloydMaxCodebook(size_t d, int nbits) : d(d), nbits(nbits) {
    FAISS_THROW_IF_NOT_FMT(
            nbits >= 1 && nbits <= 8, "TurboQuant: nbits=%d must be in 1..8", nbits);
    FAISS_THROW_IF_NOT_MSG(d >= 1, "TurboQuant: dimension must be >= 1");
    // Codebooks depend on (d, nbits) only: solve each once per process.
    static std::mutex mutex;
    static std::map<std::pair<size_t, int>, std::vector<double>> cache;
    std::vector<double> c;
    {
        std::lock_guard<std::mutex> lock(mutex);
        auto it = cache.find({d, nbits});
        if (it == cache.end()) {
            it = cache.emplace(std::make_pair(d, nbits), solve_lloyd_max(d, nbits)).first;
        }
        c = it->second;
    }
    const size_t K = c.size();
    centroids.resize(K);
    boundaries.resize(K - 1);
    for (size_t j = 0; j < K; j++) {
        centroids[j] = float(c[j]);
    }
    for (size_t j = 0; j + 1 < K; j++) {
        boundaries[j] = float(0.5 * (c[j] + c[j + 1]));
    }
    // expected squared error per coordinate: E[u^2] - sum_j mass_j c_j^2 (centroids are
    // the cell means); E[u^2] = 1 exactly for d >= 2 (u^2 averages to 1 over coordinates)
    const CoordinateLaw law(d);
    std::vector<double> b(K - 1), m(K), mass(K);
    for (size_t j = 0; j + 1 < K; j++) {
        b[j] = 0.5 * (c[j] + c[j + 1]);
    }
    cell_means(law, b, m, mass);
    double e2 = 0;
    for (size_t j = 0; j < K; j++) {
        e2 += mass[j] * m[j] * m[j];
    }
    mse = (d >= 2 ? 1.0 : 0.5) - e2 / law.total();
}

} // namespace faiss
