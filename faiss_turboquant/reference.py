"""Independent Numba reference implementation of the TurboQuant codec.

This module re-implements, from the written specification of the C++ codec
(cpp/TurboQuantizer.*, cpp/rotation.*, cpp/lloyd_max.*, cpp/scan/code_dot.*), everything
the flat index does with a vector: encoding, distance estimation and decoding. It exists
to cross-check the C++ (tests/test_reference_crosscheck.py) and is not used by the index.

What is reproduced bit for bit (structured rotation):
  * the rotation Pi (float32 butterflies, float32 normalisation factor),
  * the float64 sequential sums (norm, <u, c>, <c, c>, ||r||^2),
  * the code layout: little-endian bit stream of b-bit codes, QJL sign bits, float32
    factors [norm, ip_factor, (qjl_factor)],
  * the decoder.
The estimator follows the scalar C++ kernel (8 float32 accumulators, sequential QJL
sums); the C++ AVX2/FMA kernel and BLAS batch search agree with it to rounding. The dense rotation (BLAS sgemm in C++) is applied here with float64 sums rounded to
float32, so it only agrees to rounding.

Independently of the C++ object we also compute:
  * the Lloyd-Max codebook (Gauss-Legendre integration of the sphere-coordinate density
    plus a closed-form first moment; Lloyd iterations finished by Newton steps on the
    Lloyd fixed-point equation),
  * the structured rotations from their seed (mt19937_64 + Fisher-Yates + sign bits),
    and the derived seeds of the QJL rotations.

Reading the C++ object: SWIG exposes the std::vector members (codebook centroids,
rotation perms/signs/matrix, qjl_rotations) only as opaque pointers, without element
access, so `params_from_index` reads their storage through ctypes (libstdc++ layout:
begin / end / capacity pointers). Struct field offsets are measured at run time from
the SWIG proxies and checked against the scalar fields SWIG does expose.
"""
from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass, field

import numpy as np
from numba import njit

STRUCTURED = 0
DENSE = 1
CORRECTION_PLAIN = 0
CORRECTION_UNBIASED = 1
CORRECTION_LSQ = 2

_MASK64 = (1 << 64) - 1


# --------------------------------------------------------------------------------------
# Lloyd-Max codebook of one coordinate of a uniform unit vector in R^d (u = sqrt(d) t)
# --------------------------------------------------------------------------------------

_GL_X, _GL_W = np.polynomial.legendre.leggauss(10)


@njit(cache=True)
def _mass_at(theta, e, h, cum, glx, glw):
    """int_0^theta cos(phi)^e dphi with composite Gauss-Legendre (panel width h)."""
    k = int(theta / h)
    if k >= cum.shape[0] - 1:
        k = cum.shape[0] - 2
    a = k * h
    half = 0.5 * (theta - a)
    mid = 0.5 * (theta + a)
    s = 0.0
    for g in range(glx.shape[0]):
        c = math.cos(mid + half * glx[g])
        s += glw[g] * (c ** e if e > 0 else 1.0)
    return cum[k] + half * s


@njit(cache=True)
def _moment_at(theta, e, sqrt_d):
    """int_0^theta sqrt(d) sin(phi) cos(phi)^e dphi = sqrt(d) (1 - cos^(e+1)) / (e+1)."""
    c = math.cos(theta)
    if c <= 0.0:
        return sqrt_d / (e + 1.0)
    return -sqrt_d * math.expm1((e + 1.0) * math.log(c)) / (e + 1.0)


@njit(cache=True)
def _lloyd_map(c, e, sqrt_d, theta_c, h, cum, total, glx, glw, newc, dlo, dhi):
    """One Lloyd step on the positive half-codebook c (increasing, H values; the cell
    boundaries are 0, the midpoints, and +inf). newc = conditional means of the cells;
    dlo[j] / dhi[j] = d newc[j] / d (lower / upper boundary of cell j).
    Returns max |newc - c|."""
    H = c.shape[0]
    m_lo = 0.0   # mass / first moment below the lower boundary of the current cell
    f_lo = 0.0   # mass density (per unit u) at the lower boundary
    b_lo = 0.0
    mom_lo = 0.0
    delta = 0.0
    for j in range(H):
        if j + 1 < H:
            b_hi = 0.5 * (c[j] + c[j + 1])
            t = b_hi / sqrt_d
            th = math.asin(t) if t < 1.0 else math.pi / 2
            if th > theta_c:
                th = theta_c
            m_hi = _mass_at(th, e, h, cum, glx, glw)
            mom_hi = _moment_at(th, e, sqrt_d)
            ct = math.cos(th)
            # dM/du = cos^e(theta) dtheta/du = cos^(e-1)(theta) / sqrt(d)
            f_hi = ct ** (e - 1.0) / sqrt_d if (th < theta_c and ct > 0) else 0.0
        else:
            m_hi = total
            mom_hi = _moment_at(theta_c, e, sqrt_d)
            f_hi = 0.0
            b_hi = 0.0
        w = m_hi - m_lo
        cj = (mom_hi - mom_lo) / w
        dlo[j] = f_lo * (cj - b_lo) / w if j > 0 else 0.0
        dhi[j] = f_hi * (b_hi - cj) / w if j + 1 < H else 0.0
        newc[j] = cj
        delta = max(delta, abs(cj - c[j]))
        m_lo, mom_lo, f_lo, b_lo = m_hi, mom_hi, f_hi, b_hi
    return delta


@njit(cache=True)
def _lloyd_max_half(d, nbits, glx, glw, max_iter, tol):
    """Positive half of the symmetric Lloyd-Max codebook (float64), the number of
    Lloyd / Newton steps taken and the final residual max |T(c) - c|.

    Lloyd's map T (centroids -> conditional means of the midpoint cells) converges very
    slowly at 6-8 bits, so once plain Lloyd steps have brought the codebook close, Newton
    steps solve the same fixed-point equation T(c) = c (the Jacobian of T is tridiagonal).
    """
    e = np.float64(d - 2) if d >= 2 else 0.0  # d = 1: the arcsine law of d = 2 (see C++ doc)
    sqrt_d = math.sqrt(np.float64(d))
    # integrate on [0, theta_c]; beyond it the density is below 1e-40 of its peak
    theta_c = math.pi / 2
    if e > 0:
        theta_c = min(math.pi / 2, math.acos(math.exp(math.log(1e-40) / e)))
    npan = 4096
    h = theta_c / npan
    cum = np.zeros(npan + 1)
    for k in range(npan):
        a = k * h
        s = 0.0
        for g in range(glx.shape[0]):
            cs = math.cos(a + 0.5 * h * (glx[g] + 1.0))
            s += glw[g] * (cs ** e if e > 0 else 1.0)
        cum[k + 1] = cum[k] + 0.5 * h * s
    total = cum[npan]
    H = (1 << nbits) // 2

    # start: conditional means of equal-probability cells (bisection on the mass)
    c = np.empty(H)
    m_lo = 0.0
    mom_lo = 0.0
    for j in range(H):
        if j + 1 < H:
            target = total * (j + 1) / H
            lo, hi = 0.0, theta_c
            for _ in range(200):
                mid = 0.5 * (lo + hi)
                if _mass_at(mid, e, h, cum, glx, glw) < target:
                    lo = mid
                else:
                    hi = mid
            th = 0.5 * (lo + hi)
            m_hi = _mass_at(th, e, h, cum, glx, glw)
            mom_hi = _moment_at(th, e, sqrt_d)
        else:
            m_hi = total
            mom_hi = _moment_at(theta_c, e, sqrt_d)
        c[j] = (mom_hi - mom_lo) / (m_hi - m_lo)
        m_lo, mom_lo = m_hi, mom_hi

    newc = np.empty(H)
    cand = np.empty(H)
    tc = np.empty(H)
    dlo = np.empty(H)
    dhi = np.empty(H)
    dlo2 = np.empty(H)
    dhi2 = np.empty(H)
    sub = np.empty(H)
    dia = np.empty(H)
    sup = np.empty(H)
    rhs = np.empty(H)
    steps = 0
    res = _lloyd_map(c, e, sqrt_d, theta_c, h, cum, total, glx, glw, newc, dlo, dhi)
    while steps < max_iter and res >= tol:
        steps += 1
        if steps <= 50 or res > 1e-3:
            # plain Lloyd step
            for j in range(H):
                c[j] = newc[j]
            res = _lloyd_map(c, e, sqrt_d, theta_c, h, cum, total, glx, glw, newc, dlo, dhi)
            continue
        # Newton on F(c) = T(c) - c: (J_T - I) delta = -(T(c) - c), J_T tridiagonal
        for j in range(H):
            sub[j] = 0.5 * dlo[j]
            sup[j] = 0.5 * dhi[j]
            dia[j] = 0.5 * (dlo[j] + dhi[j]) - 1.0
            rhs[j] = -(newc[j] - c[j])
        for j in range(1, H):  # Thomas algorithm
            wgt = sub[j] / dia[j - 1]
            dia[j] -= wgt * sup[j - 1]
            rhs[j] -= wgt * rhs[j - 1]
        rhs[H - 1] /= dia[H - 1]
        for j in range(H - 2, -1, -1):
            rhs[j] = (rhs[j] - sup[j] * rhs[j + 1]) / dia[j]
        lam = 1.0
        accepted = False
        for _ in range(30):
            ok = True
            for j in range(H):
                cand[j] = c[j] + lam * rhs[j]
                if cand[j] <= 0 or (j > 0 and cand[j] <= cand[j - 1]):
                    ok = False
            if ok:
                r2 = _lloyd_map(cand, e, sqrt_d, theta_c, h, cum, total, glx, glw, tc, dlo2, dhi2)
                if r2 < res:
                    for j in range(H):
                        c[j] = cand[j]
                        newc[j] = tc[j]
                        dlo[j] = dlo2[j]
                        dhi[j] = dhi2[j]
                    res = r2
                    accepted = True
                    break
            lam *= 0.5
        if not accepted:  # no progress possible: the residual is at rounding level
            break
    return newc, steps, res


def lloyd_max_codebook(d, nbits, max_iter=100000, tol=1e-13, return_info=False):
    """(centroids, boundaries) float64 in u = sqrt(d) * t space, computed independently.

    Density of t (one coordinate of a uniform unit vector of R^d): (1 - t^2)^((d-3)/2),
    integrated as cos(theta)^(d-2) with t = sin(theta) (composite Gauss-Legendre for the
    mass, closed form for the first moment); d = 1 uses d = 2's arcsine law (the C++
    convention). Lloyd iterations from equal-probability cells, finished by Newton steps
    on the Lloyd fixed-point equation. With return_info, also {"steps", "residual"}:
    residual = max |T(c) - c| of the Lloyd map T at the returned codebook.
    """
    if not 1 <= nbits <= 8 or d < 1:
        raise ValueError("bad d / nbits")
    half, steps, residual = _lloyd_max_half(
        int(d), int(nbits), _GL_X, _GL_W, int(max_iter), float(tol))
    cen = np.concatenate([-half[::-1], half])
    bnd = 0.5 * (cen[1:] + cen[:-1])
    bnd[len(half) - 1] = 0.0
    if return_info:
        return cen, bnd, {"steps": int(steps), "residual": float(residual)}
    return cen, bnd


def expected_abs_coordinate(d):
    """E|s_1| for s uniform on the unit sphere of R^d."""
    return math.exp(math.lgamma(d / 2.0) - math.lgamma((d + 1) / 2.0)) / math.sqrt(math.pi)


# --------------------------------------------------------------------------------------
# Rotations generated from a seed (independent of the C++ object)
# --------------------------------------------------------------------------------------

class MT19937_64:
    """The standard 64-bit Mersenne Twister (std::mt19937_64), pure Python."""

    def __init__(self, seed):
        self.mt = [0] * 312
        self.mt[0] = seed & _MASK64
        for i in range(1, 312):
            prev = self.mt[i - 1]
            self.mt[i] = (6364136223846793005 * (prev ^ (prev >> 62)) + i) & _MASK64
        self.idx = 312

    def _twist(self):
        mt = self.mt
        upper, lower = 0xFFFFFFFF80000000, 0x7FFFFFFF
        for i in range(312):
            x = (mt[i] & upper) | (mt[(i + 1) % 312] & lower)
            xa = x >> 1
            if x & 1:
                xa ^= 0xB5026F5AA96619E9
            mt[i] = mt[(i + 156) % 312] ^ xa
        self.idx = 0

    def __call__(self):
        if self.idx >= 312:
            self._twist()
        y = self.mt[self.idx]
        self.idx += 1
        y ^= (y >> 29) & 0x5555555555555555
        y ^= (y << 17) & 0x71D67FFFEDA60000
        y ^= (y << 37) & 0xFFF7EEE000000000
        y ^= y >> 43
        return y & _MASK64


def structured_rotation(d, rounds, seed):
    """(perms int32 rounds x d, signs float32 rounds x d) of a structured rotation."""
    rng = MT19937_64(seed)
    perms = np.empty((rounds, d), np.int32)
    signs = np.empty((rounds, d), np.float32)
    for r in range(rounds):
        perm = list(range(d))
        for i in range(d, 1, -1):  # Fisher-Yates
            j = rng() % i
            perm[i - 1], perm[j] = perm[j], perm[i - 1]
        perms[r] = perm
        signs[r] = [-1.0 if rng() >> 63 else 1.0 for _ in range(d)]
    return perms, signs


def derived_seed(seed, j):
    """Seed of the j-th QJL rotation (splitmix64 finaliser of seed + golden * (j+1))."""
    z = (seed + 0x9E3779B97F4A7C15 * (j + 1)) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


# --------------------------------------------------------------------------------------
# Parameters read out of the C++ object
# --------------------------------------------------------------------------------------

@dataclass
class RotationParams:
    d: int
    kind: int
    rounds: int
    seed: int
    perms: np.ndarray  # int32 (rounds, d)   (structured)
    signs: np.ndarray  # float32 (rounds, d) (structured)
    matrix: np.ndarray  # float32 (d, d) row-major (dense), else (0, d)


@dataclass
class TQParams:
    d: int
    nbits: int
    qjl_m: int
    seed: int
    rotation_kind: int
    rotation_rounds: int
    correction: int
    mse_bytes: int
    qjl_bytes: int
    code_size: int
    qjl_scale: float
    centroids: np.ndarray  # float32 (2^nbits,)
    boundaries: np.ndarray  # float32 (2^nbits - 1,)
    rotation: RotationParams
    qjl_rotations: list = field(default_factory=list)  # list of RotationParams
    metric_l2: bool = True
    scale_search: int = 1  # quantisation passes of the per-vector grid-scale search

    @property
    def factors_offset(self):
        return self.mse_bytes + self.qjl_bytes

    def qjl_perms(self):
        if not self.qjl_rotations:
            return np.zeros((0, self.rotation_rounds, self.d), np.int32)
        return np.ascontiguousarray(np.stack([r.perms for r in self.qjl_rotations]))

    def qjl_signs(self):
        if not self.qjl_rotations:
            return np.zeros((0, self.rotation_rounds, self.d), np.float32)
        return np.ascontiguousarray(np.stack([r.signs for r in self.qjl_rotations]))


def _addr(obj):
    """address of the C++ object behind a SWIG proxy or raw SwigPyObject"""
    return int(obj.this) if hasattr(obj, "this") else int(obj)


def _read_std_vector(addr, dtype, expected_len=None):
    """copy of the elements of the libstdc++ std::vector<T> living at `addr`"""
    begin, end = (ctypes.c_uint64 * 2).from_address(addr)
    dtype = np.dtype(dtype)
    nbytes = end - begin
    if nbytes % dtype.itemsize:
        raise RuntimeError("std::vector size is not a multiple of the element size")
    n = nbytes // dtype.itemsize
    if expected_len is not None and n != expected_len:
        raise RuntimeError("std::vector has %d elements, expected %d" % (n, expected_len))
    if n == 0:
        return np.zeros(0, dtype)
    return np.frombuffer((ctypes.c_char * nbytes).from_address(begin), dtype=dtype).copy()


def _rotation_layout(rot):
    """byte offsets of the fields of TQRotation, measured on a live SWIG proxy"""
    base = _addr(rot)
    lay = {
        "perms": _addr(rot.perms) - base,
        "signs": _addr(rot.signs) - base,
        "matrix": _addr(rot.matrix) - base,
    }
    # scalar fields: declared order size_t d; int kind; int rounds; uint64_t seed
    lay["d"], lay["kind"], lay["rounds"], lay["seed"] = 0, 8, 12, 16
    got = _read_rotation_scalars(base, lay)
    if got != (int(rot.d), int(rot.kind), int(rot.rounds), int(rot.seed)):
        raise RuntimeError("unexpected TQRotation memory layout: %r" % (got,))
    return lay


def _read_rotation_scalars(base, lay):
    return (
        ctypes.c_uint64.from_address(base + lay["d"]).value,
        ctypes.c_int32.from_address(base + lay["kind"]).value,
        ctypes.c_int32.from_address(base + lay["rounds"]).value,
        ctypes.c_uint64.from_address(base + lay["seed"]).value,
    )


def _read_rotation(base, lay):
    d, kind, rounds, seed = _read_rotation_scalars(base, lay)
    if kind == STRUCTURED:
        perms = _read_std_vector(base + lay["perms"], np.int32, rounds * d).reshape(rounds, d)
        signs = _read_std_vector(base + lay["signs"], np.float32, rounds * d).reshape(rounds, d)
        matrix = np.zeros((0, d), np.float32)
    else:
        perms = np.zeros((0, d), np.int32)
        signs = np.zeros((0, d), np.float32)
        matrix = _read_std_vector(base + lay["matrix"], np.float32, d * d).reshape(d, d)
    return RotationParams(d, kind, rounds, seed, perms, signs, matrix)


def params_from_index(index):
    """All codec parameters of an IndexTurboQuant (or of its TurboQuantizer `tq`)."""
    tq = index.tq if hasattr(index, "tq") else index
    d = int(tq.d)
    cb = tq.codebook
    K = 1 << int(tq.nbits)
    centroids = _read_std_vector(_addr(cb.centroids), np.float32, K)
    boundaries = _read_std_vector(_addr(cb.boundaries), np.float32, K - 1)
    lay = _rotation_layout(tq.rotation)
    rotation = _read_rotation(_addr(tq.rotation), lay)
    qjl_m = int(tq.qjl_m)
    nrot = (qjl_m + d - 1) // d
    qjl_rotations = []
    begin, end = (ctypes.c_uint64 * 2).from_address(_addr(tq.qjl_rotations))
    if nrot:
        stride = (end - begin) // nrot
        if stride * nrot != end - begin or stride < lay["matrix"] + 24:
            raise RuntimeError("unexpected std::vector<TQRotation> size")
        for j in range(nrot):
            qjl_rotations.append(_read_rotation(begin + j * stride, lay))
    elif end != begin:
        raise RuntimeError("qjl_rotations not empty although qjl_m = 0")
    metric_l2 = True
    if hasattr(index, "metric_type"):
        import faiss

        metric_l2 = index.metric_type == faiss.METRIC_L2
    return TQParams(
        d=d,
        nbits=int(tq.nbits),
        qjl_m=qjl_m,
        seed=int(tq.seed),
        rotation_kind=int(tq.rotation_kind),
        rotation_rounds=int(tq.rotation_rounds),
        correction=int(tq.correction),
        scale_search=int(tq.scale_search),
        mse_bytes=int(tq.mse_bytes),
        qjl_bytes=int(tq.qjl_bytes),
        code_size=int(tq.code_size),
        qjl_scale=float(tq.qjl_scale),
        centroids=centroids,
        boundaries=boundaries,
        rotation=rotation,
        qjl_rotations=qjl_rotations,
        metric_l2=metric_l2,
    )


# --------------------------------------------------------------------------------------
# Rotation application
# --------------------------------------------------------------------------------------

@njit(cache=True, inline="always")
def _fwht(x, off, p):
    """in-place normalised Walsh-Hadamard transform of x[off:off+p], float32"""
    h = 1
    while h < p:
        for i in range(0, p, 2 * h):
            for j in range(i, i + h):
                a = x[off + j]
                b = x[off + j + h]
                x[off + j] = a + b
                x[off + j + h] = a - b
        h *= 2
    s = np.float32(1.0 / math.sqrt(np.float64(p)))
    for j in range(p):
        x[off + j] = x[off + j] * s


@njit(cache=True, inline="always")
def _block(d):
    p = 1
    while p * 2 <= d:
        p *= 2
    return p


@njit(cache=True)
def _rotate_one(x, perms, signs, y, tmp):
    """y = Pi x for one vector (structured rotation)"""
    d = x.shape[0]
    p = _block(d)
    for i in range(d):
        y[i] = x[i]
    for r in range(perms.shape[0]):
        for i in range(d):
            tmp[i] = y[perms[r, i]] * signs[r, i]
        for i in range(d):
            y[i] = tmp[i]
        _fwht(y, 0, p)
        if p < d:
            _fwht(y, d - p, p)


@njit(cache=True)
def _rotate_T_one(y, perms, signs, x, tmp):
    """x = Pi^T y for one vector (structured rotation)"""
    d = y.shape[0]
    p = _block(d)
    for i in range(d):
        tmp[i] = y[i]
    for r in range(perms.shape[0] - 1, -1, -1):
        if p < d:
            _fwht(tmp, d - p, p)
        _fwht(tmp, 0, p)
        for i in range(d):
            x[perms[r, i]] = tmp[i] * signs[r, i]
        for i in range(d):
            tmp[i] = x[i]


@njit(cache=True)
def _rotate_structured(X, perms, signs, transpose):
    n, d = X.shape
    Y = np.empty((n, d), np.float32)
    tmp = np.empty(d, np.float32)
    for v in range(n):
        if transpose:
            _rotate_T_one(X[v], perms, signs, Y[v], tmp)
        else:
            _rotate_one(X[v], perms, signs, Y[v], tmp)
    return Y


@njit(cache=True)
def _rotate_dense(X, M, transpose):
    """rows of X times M^T (or M), float64 sequential sums rounded to float32: the result
    of a row does not depend on the batch it is in (BLAS results may)"""
    n, d = X.shape
    Y = np.empty((n, d), np.float32)
    acc = np.zeros(d)
    for v in range(n):
        for i in range(d):
            acc[i] = 0.0
        for t in range(d):
            xt = np.float64(X[v, t])
            for i in range(d):
                acc[i] += (np.float64(M[t, i]) if transpose else np.float64(M[i, t])) * xt
        for i in range(d):
            Y[v, i] = np.float32(acc[i])
    return Y


def rotate(rot: RotationParams, X, transpose=False):
    """Pi X (rows) or Pi^T X, float32"""
    X = np.ascontiguousarray(X, dtype=np.float32).reshape(-1, rot.d)
    if rot.kind == STRUCTURED:
        return _rotate_structured(X, rot.perms, rot.signs, bool(transpose))
    return _rotate_dense(X, rot.matrix, bool(transpose))


# --------------------------------------------------------------------------------------
# Bit packing
# --------------------------------------------------------------------------------------

@njit(cache=True)
def _pack_bits(vals, nbits, out, off):
    """vals[i] (< 2^nbits) at bit i*nbits of the little-endian bit stream out[off:]"""
    for i in range(vals.shape[0]):
        v = int(vals[i])
        for b in range(nbits):
            if (v >> b) & 1:
                pos = i * nbits + b
                out[off + (pos >> 3)] |= np.uint8(1 << (pos & 7))


@njit(cache=True)
def _unpack_all(codes, d, nbits, m, mse_bytes):
    """(n x d uint8 codes, n x m uint8 sign bits) from packed codes"""
    n = codes.shape[0]
    c = np.zeros((n, d), np.uint8)
    bits = np.zeros((n, m), np.uint8)
    for v in range(n):
        for i in range(d):
            val = 0
            for b in range(nbits):
                pos = i * nbits + b
                val |= ((int(codes[v, pos >> 3]) >> (pos & 7)) & 1) << b
            c[v, i] = val
        for k in range(m):
            bits[v, k] = (codes[v, mse_bytes + (k >> 3)] >> (k & 7)) & 1
    return c, bits


def unpack(params: TQParams, codes):
    """(codes n x d uint8, qjl bits n x m uint8, factors n x (2 or 3) float32)"""
    codes = np.ascontiguousarray(codes, dtype=np.uint8).reshape(-1, params.code_size)
    c, bits = _unpack_all(codes, params.d, params.nbits, params.qjl_m, params.mse_bytes)
    nf = 3 if params.qjl_m > 0 else 2
    off = params.factors_offset
    factors = np.ascontiguousarray(codes[:, off:off + 4 * nf]).view(np.float32)
    return c, bits, factors.reshape(-1, nf)


# --------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------

# NB: inside the kernels float32 -> float64 conversions are written np.float64(v):
# Numba's float(v) keeps a float32 value in single precision.
@njit(cache=True)
def _quantize_pass(Y, v, inv, t, bnd, cen, c):
    """codes of vector v at grid scale t (float32 products u * t) into c; returns (uc, cc):
    float64 sums of u * centroid and centroid^2, as two partial sums over the even and the
    odd coordinates (each in increasing i), then even + odd (the C++ order)."""
    d = Y.shape[1]
    nb = bnd.shape[0]
    uc_p = np.zeros(2)
    cc_p = np.zeros(2)
    for i in range(d):
        u = Y[v, i] * inv
        ut = u * t
        # code = number of boundaries strictly below u * t
        lo, hi = 0, nb
        while lo < hi:
            mid = (lo + hi) // 2
            if bnd[mid] < ut:
                lo = mid + 1
            else:
                hi = mid
        c[i] = lo
        cv = np.float64(cen[lo])
        uc_p[i % 2] += np.float64(u) * cv
        cc_p[i % 2] += cv * cv
    return uc_p[0] + uc_p[1], cc_p[0] + cc_p[1]


@njit(cache=True)
def _criterion(uc, cc):
    return uc / math.sqrt(cc) if uc > 0 else -np.inf


@njit(cache=True)
def _encode_kernel(X, Y, cen, bnd, nbits, correction, qperms, qsigns, qjl_m, qjl_scale,
                   mse_bytes, qjl_bytes, npasses):
    n, d = X.shape
    out = np.zeros((n, mse_bytes + qjl_bytes), np.uint8)
    factors = np.zeros((n, 3), np.float32)
    sqrt_d = math.sqrt(np.float64(d))
    c = np.zeros(d, np.uint8)
    c2 = np.zeros(d, np.uint8)
    r = np.zeros(d, np.float32)
    z = np.zeros(d, np.float32)
    tmp = np.zeros(d, np.float32)
    if nbits < 2:
        npasses = 1
    for v in range(n):
        n2 = 0.0
        for i in range(d):
            xi = np.float64(X[v, i])
            n2 += xi * xi
        norm = math.sqrt(n2)
        inv = np.float32(sqrt_d / norm) if norm > 0 else np.float32(0.0)
        uc, cc = _quantize_pass(Y, v, inv, np.float32(1.0), bnd, cen, c)
        # grid-scale search: t_k = float32(1 + 0.05 k); pass 1 tries k = -1, later passes
        # step beyond the best (down below 1, up above 1), or try the other side while the
        # best is still k = 0; strictly larger uc / sqrt(cc) wins
        best = _criterion(uc, cc)
        kbest = 0
        klo = 0
        khi = 0
        for p in range(1, npasses):
            if kbest < 0 or (kbest == 0 and klo == 0):
                klo -= 1
                ktry = klo
            elif kbest > 0 or (kbest == 0 and khi == 0):
                khi += 1
                ktry = khi
            else:
                ktry = 0
            t = np.float32(1.0 + 0.05 * ktry)
            uc2, cc2 = _quantize_pass(Y, v, inv, t, bnd, cen, c2)
            crit = _criterion(uc2, cc2)
            if crit > best:
                best = crit
                kbest = ktry
                uc = uc2
                cc = cc2
                c[:] = c2
        ipf = 0.0
        if norm > 0 and uc > 0:
            if correction == 0:
                ipf = norm / sqrt_d
            elif correction == 1:
                ipf = norm * sqrt_d / uc
            else:
                ipf = norm * uc / (sqrt_d * cc)
        _pack_bits(c, nbits, out[v], 0)
        factors[v, 0] = np.float32(norm)
        factors[v, 1] = np.float32(ipf)
        if qjl_m > 0:
            ipf_f = np.float32(ipf)
            rn2 = 0.0
            for i in range(d):
                t = ipf_f * cen[c[i]]
                r[i] = Y[v, i] - t
                rn2 += np.float64(r[i]) * np.float64(r[i])
            for j in range(qperms.shape[0]):
                _rotate_one(r, qperms[j], qsigns[j], z, tmp)
                for i in range(d):
                    k = j * d + i
                    if k >= qjl_m:
                        break
                    if z[i] > 0:
                        out[v, mse_bytes + (k >> 3)] |= np.uint8(1 << (k & 7))
            factors[v, 2] = np.float32(math.sqrt(rn2) * qjl_scale)
    return out, factors


def encode(params: TQParams, x):
    """uint8 codes (n x code_size), same layout and (structured rotation) same bits as C++"""
    X = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, params.d)
    if not np.all(np.isfinite(X)):
        raise ValueError("TurboQuant reference: input contains NaN or inf")
    Y = rotate(params.rotation, X)
    out, factors = _encode_kernel(
        X, Y, params.centroids, params.boundaries, params.nbits, params.correction,
        params.qjl_perms(), params.qjl_signs(), params.qjl_m, params.qjl_scale,
        params.mse_bytes, params.qjl_bytes, params.scale_search)
    nf = 3 if params.qjl_m > 0 else 2
    fac = np.ascontiguousarray(factors[:, :nf]).view(np.uint8)
    codes = np.concatenate([out, fac], axis=1)
    assert codes.shape[1] == params.code_size
    return codes


# --------------------------------------------------------------------------------------
# Estimation
# --------------------------------------------------------------------------------------

@njit(cache=True)
def _prepare_kernel(Q, QR, qperms, qsigns, qjl_m):
    nq, d = Q.shape
    qnorm2 = np.zeros(nq, np.float32)
    proj = np.zeros((nq, qjl_m), np.float32)
    psum = np.zeros(nq, np.float32)
    z = np.zeros(d, np.float32)
    tmp = np.zeros(d, np.float32)
    for a in range(nq):
        n2 = 0.0
        for i in range(d):
            qi = np.float64(Q[a, i])
            n2 += qi * qi
        qnorm2[a] = np.float32(n2)
        s = np.float32(0.0)
        for j in range(qperms.shape[0]):
            _rotate_one(QR[a], qperms[j], qsigns[j], z, tmp)
            for i in range(d):
                k = j * d + i
                if k >= qjl_m:
                    break
                proj[a, k] = z[i]
                s = s + z[i]
        psum[a] = s
    return qnorm2, proj, psum


@njit(cache=True)
def _estimate_kernel(C, bits, factors, cen, QR, proj, psum, qnorm2, l2):
    n, d = C.shape
    nq = QR.shape[0]
    m = bits.shape[1]
    D = np.empty((nq, n), np.float32)
    acc = np.zeros(8, np.float32)
    for a in range(nq):
        for v in range(n):
            for j in range(8):
                acc[j] = np.float32(0.0)
            for i in range(d):  # coordinate i goes to accumulator i % 8
                acc[i & 7] = acc[i & 7] + QR[a, i] * cen[C[v, i]]
            dot = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
            ip = factors[v, 1] * dot
            if m > 0:
                s = np.float32(0.0)
                for k in range(m):
                    if bits[v, k]:
                        s = s + proj[a, k]
                ip = ip + factors[v, 2] * ((s + s) - psum[a])
            if l2:
                nv = factors[v, 0]
                D[a, v] = (qnorm2[a] + nv * nv) - (ip + ip)
            else:
                D[a, v] = ip
    return D


def _estimate(params: TQParams, codes, q, l2):
    Q = np.ascontiguousarray(q, dtype=np.float32).reshape(-1, params.d)
    C, bits, factors = unpack(params, codes)
    QR = rotate(params.rotation, Q)
    qnorm2, proj, psum = _prepare_kernel(
        Q, QR, params.qjl_perms(), params.qjl_signs(), params.qjl_m)
    if params.qjl_m == 0:
        factors = np.concatenate([factors, np.zeros((len(factors), 1), np.float32)], axis=1)
    return _estimate_kernel(C, bits, np.ascontiguousarray(factors), params.centroids, QR,
                            proj, psum, qnorm2, l2)


def estimate_ip(params: TQParams, codes, q):
    """(nq x n) float32 estimated inner products <q_a, x_v>"""
    return _estimate(params, codes, q, False)


def estimate_l2(params: TQParams, codes, q):
    """(nq x n) float32 estimated squared distances ||q_a - x_v||^2"""
    return _estimate(params, codes, q, True)


def estimate_distance(params: TQParams, codes, q):
    """distances for the index metric (params.metric_l2)"""
    return _estimate(params, codes, q, params.metric_l2)


def topk(D, k, l2):
    """(distances, ids) of the k best entries of each row of D (ids -1 past the end)"""
    nq, n = D.shape
    key = D if l2 else -D
    order = np.argsort(key, axis=1, kind="stable")[:, :k]
    dist = np.take_along_axis(D, order, axis=1)
    ids = order.astype(np.int64)
    if n < k:
        pad = k - n
        big = np.finfo(np.float32).max
        dist = np.concatenate([dist, np.full((nq, pad), big if l2 else -big, np.float32)], axis=1)
        ids = np.concatenate([ids, np.full((nq, pad), -1, np.int64)], axis=1)
    return dist, ids


def search(params: TQParams, codes, q, k):
    """exhaustive top-k on the estimated distances: (distances, ids)"""
    return topk(estimate_distance(params, codes, q), k, params.metric_l2)


# --------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------

@njit(cache=True)
def _decode_kernel(C, bits, factors, cen, correction, qperms, qsigns, qjl_m, qjl_scale):
    """reconstruction in the rotated space (before Pi^T)"""
    n, d = C.shape
    Y = np.zeros((n, d), np.float32)
    z = np.zeros(d, np.float32)
    t = np.zeros(d, np.float32)
    tmp = np.zeros(d, np.float32)
    qjl_lsq = 1.0 / (qjl_scale * qjl_scale * np.float64(qjl_m)) if qjl_m > 0 else 0.0
    for v in range(n):
        norm = factors[v, 0]
        ipf = factors[v, 1]
        cc = 0.0
        for i in range(d):
            cv = np.float64(cen[C[v, i]])
            cc += cv * cv
        s = np.float64(ipf)
        if qjl_m == 0 and correction == 1 and ipf > 0:
            s = np.float64(norm) * np.float64(norm) / (np.float64(ipf) * cc)
        for i in range(d):
            Y[v, i] = np.float32(s * np.float64(cen[C[v, i]]))
        if qjl_m > 0:
            qf = np.float64(factors[v, 2]) * qjl_lsq * min(1.0, np.float64(d) / np.float64(qjl_m))
            for j in range(qperms.shape[0]):
                for i in range(d):
                    k = j * d + i
                    if k < qjl_m:
                        z[i] = np.float32(qf) if bits[v, k] else np.float32(-qf)
                    else:
                        z[i] = np.float32(0.0)
                _rotate_T_one(z, qperms[j], qsigns[j], t, tmp)
                for i in range(d):
                    Y[v, i] = Y[v, i] + t[i]
    return Y


def decode(params: TQParams, codes):
    """approximate vectors (n x d float32) from codes"""
    C, bits, factors = unpack(params, codes)
    if params.qjl_m == 0:
        factors = np.concatenate([factors, np.zeros((len(factors), 1), np.float32)], axis=1)
    Y = _decode_kernel(C, bits, np.ascontiguousarray(factors), params.centroids,
                       params.correction, params.qjl_perms(), params.qjl_signs(),
                       params.qjl_m, params.qjl_scale)
    return rotate(params.rotation, Y, transpose=True)
