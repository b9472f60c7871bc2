// im2col on the CPU, cache-blocked: build a tile of the patch matrix in L1/L2 and hand it straight to a GEMM.
//
// Layout (all NHWC):  x (N, H, W, C)   y (N, P, Q, K)   one output pixel m = (n, p, q) per cols row.
//   cols[m, g, r, s, c'] = x[n, p·sh − pt + r·dh, q·sw − pl + s·dw, g·Cg + c']      (0 outside the image)
//   y[m, g·Kg + k']      = Σ_{r,s,c'} cols[m, g, r, s, c'] · Wt[g, r, s, c', k'] (+ bias)   one GEMM per group
// For G == 1 a cols row is R·S runs of C contiguous input channels; depthwise convs with a channel multiplier keep
// it tap-major, cols[m, r, s, c]. Depthwise convs without one never build cols (see "depthwise convs" below), and
// NCHW inputs have their own sections (colsT, one row per (c, r, s)).
//
// Blocking: a tile is MT output pixels of one image; its cols block (MT × R·S·C floats) is sized by the caller to
// stay in L2, so cols never goes to DRAM: per tile the input halo is read once, cols written and read once (in
// cache), the output written once. The GEMM is ATen's fp32 brgemm micro-kernel (oneDNN's ukernel where the build
// has it, else ATen's cpublas::gemm), declared here exactly as in ATen/native/CPUBlas.h so this file needs no torch
// headers and compiles in about a second.
//
// Backward. Stride 1: grad_x is the forward conv of grad_y with the kernel flipped (same code, no scatter).
// Strided, per tile (one image per thread, so the col2im scatter never races):
//   grad_cols = grad_y @ Wᵀ (GEMM) then col2im adds each cols entry back onto the input pixel it came from.
// Always: grad_W += grad_yᵀ @ cols (GEMM, cols rebuilt in cache, per-thread partial sums added at the end);
//   grad_b += Σ_m grad_y.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include <omp.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

namespace at::native::cpublas {
void brgemm(int64_t M, int64_t N, int64_t K, int64_t ld_a, int64_t ld_b, int64_t ld_c, bool add_C, const float* A,
            const float* B, float* C, bool is_vnni);
void brgemm_release(bool is_vnni);
}  // namespace at::native::cpublas

namespace {

struct Geom {
  int64_t N, C, H, W, K, R, S, P, Q, sh, sw, pt, pl, dh, dw, G;
  int64_t Cg() const { return C / G; }
  int64_t Kg() const { return K / G; }
  int64_t RS() const { return R * S; }
  int64_t row() const { return R * S * C; }  // cols row length
  bool depthwise() const { return G > 1 && C == G; }
  // 1×1, stride 1, unpadded, ungrouped: the NHWC input already is the cols matrix
  // 1×1, stride 1, unpadded: each group's input planes already are its colsT (NCHW)
  bool pointwise_t() const { return R == 1 && S == 1 && sh == 1 && sw == 1 && pt == 0 && pl == 0 && P == H && Q == W; }
  bool pointwise() const { return pointwise_t() && G == 1; }
};

Geom geom(const int64_t* g) {
  return Geom{g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8], g[9], g[10], g[11], g[12], g[13], g[14], g[15]};
}

// C = A (M×K) · B (K×N), row-major with leading dimensions; add to C when acc.
inline void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
                 int64_t ldc, bool acc) {
  at::native::cpublas::brgemm(M, N, K, lda, ldb, ldc, acc, A, B, C, false);
}

// Short runs (a tap's C or C/G channels, an output row's Q pixels) dominate, so they are moved in whole vectors:
// AVX-512 masked loads/stores cover any length in ⌈n/16⌉ instructions with no scalar tail; elsewhere a plain loop.
#ifdef __AVX512F__
inline __mmask16 tail(int64_t n) { return (__mmask16)((1u << n) - 1u); }
inline void copy(float* __restrict d, const float* __restrict s, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(d + i, _mm512_loadu_ps(s + i));
  if (i < n) _mm512_mask_storeu_ps(d + i, tail(n - i), _mm512_maskz_loadu_ps(tail(n - i), s + i));
}
inline void zero(float* __restrict d, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(d + i, _mm512_setzero_ps());
  if (i < n) _mm512_mask_storeu_ps(d + i, tail(n - i), _mm512_setzero_ps());
}
inline void add(float* __restrict d, const float* __restrict s, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(d + i, _mm512_add_ps(_mm512_loadu_ps(d + i), _mm512_loadu_ps(s + i)));
  if (i < n) {
    const __mmask16 m = tail(n - i);
    _mm512_mask_storeu_ps(d + i, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, d + i), _mm512_maskz_loadu_ps(m, s + i)));
  }
}
#else
inline void copy(float* __restrict d, const float* __restrict s, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) d[i] = s[i];
}
inline void zero(float* __restrict d, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) d[i] = 0.f;
}
inline void add(float* __restrict d, const float* __restrict s, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) d[i] += s[i];
}
#endif

// Moving one run of `len` floats between a cols row and the input image: Build copies it in (zeros for padding),
// Scatter (col2im) adds it back onto the input gradient.
struct Build {
  static void run(float* cols, float* img, int64_t len) { copy(cols, img, len); }
  static void run(float* cols, float* img, int64_t len, int64_t stride) {
    for (int64_t i = 0; i < len; ++i) cols[i] = img[i * stride];
  }
  static void pad(float* cols, int64_t len) { zero(cols, len); }
};
struct Scatter {
  static void run(float* cols, float* img, int64_t len) { add(img, cols, len); }
  static void run(float* cols, float* img, int64_t len, int64_t stride) {
    for (int64_t i = 0; i < len; ++i) img[i * stride] += cols[i];
  }
  static void pad(float*, int64_t) {}
};

// Walk the cols rows of `mt` output pixels starting at pixel m0 of one image `img` (H, W, C). With tap-major rows
// and no dilation, the S taps of one kernel row are S·C contiguous floats on both sides: one run instead of S.
template <class Op>
void walk(const Geom& g, float* img, float* cols, int64_t m0, int64_t mt) {
  const int64_t C = g.C, S = g.S, RS = g.RS(), Cg = g.Cg(), row = g.row();
  const bool tap_major = g.G == 1 || g.depthwise();
  int64_t p = m0 / g.Q, q = m0 % g.Q;
  for (int64_t i = 0; i < mt; ++i) {
    float* crow = cols + i * row;
    const int64_t iw0 = q * g.sw - g.pl;
    const bool whole_row = g.dw == 1 && iw0 >= 0 && iw0 + S <= g.W;
    for (int64_t r = 0; r < g.R; ++r) {
      const int64_t ih = p * g.sh - g.pt + r * g.dh;
      float* line = ih >= 0 && ih < g.H ? img + ih * g.W * C : nullptr;
      if (tap_major) {
        float* d = crow + r * S * C;
        if (!line) {
          Op::pad(d, S * C);
        } else if (whole_row) {
          Op::run(d, line + iw0 * C, S * C);
        } else {
          for (int64_t s = 0; s < S; ++s) {
            const int64_t iw = iw0 + s * g.dw;
            if (iw >= 0 && iw < g.W) Op::run(d + s * C, line + iw * C, C); else Op::pad(d + s * C, C);
          }
        }
        continue;
      }
      for (int64_t s = 0; s < S; ++s) {  // group-major rows: each group's C/G channels of the tap
        const int64_t iw = iw0 + s * g.dw;
        const bool in = line && iw >= 0 && iw < g.W;
        for (int64_t gi = 0; gi < g.G; ++gi) {
          float* d = crow + (gi * RS + r * S + s) * Cg;
          if (in) Op::run(d, line + iw * C + gi * Cg, Cg); else Op::pad(d, Cg);
        }
      }
    }
    if (++q == g.Q) q = 0, ++p;
  }
}

void build_cols(const Geom& g, const float* x, int64_t n, int64_t m0, int64_t mt, float* cols) {
  walk<Build>(g, const_cast<float*>(x) + n * g.H * g.W * g.C, cols, m0, mt);
}

void col2im(const Geom& g, float* gcols, int64_t n, int64_t m0, int64_t mt, float* gx) {
  walk<Scatter>(g, gx + n * g.H * g.W * g.C, gcols, m0, mt);
}

// NCHW ("cols transposed"): colsT[(c, r, s), i] = x[n, c0 + c, ih(i, r), iw(i, s)] for the cc channels of one group
// and the mt pixels m0.. of one image `img` (C, H, W); rows have leading dimension ld. Along a row the pixels of one
// output row read one input row: a contiguous run for stride 1 (zeros where it hangs over the padding).
template <class Op>
void walk_t(const Geom& g, float* img, float* cols, int64_t ld, int64_t c0, int64_t cc, int64_t m0, int64_t mt) {
  for (int64_t c = 0; c < cc; ++c) {
    float* plane = img + (c0 + c) * g.H * g.W;
    for (int64_t r = 0; r < g.R; ++r)
      for (int64_t s = 0; s < g.S; ++s) {
        float* row = cols + ((c * g.R + r) * g.S + s) * ld;
        const int64_t off = s * g.dw - g.pl;  // iw = q·sw + off
        const int64_t qlo = off >= 0 ? 0 : (-off + g.sw - 1) / g.sw;  // first q with iw ≥ 0
        const int64_t qhi = g.W - 1 - off >= 0 ? (g.W - 1 - off) / g.sw + 1 : 0;  // one past the last with iw < W
        int64_t p = m0 / g.Q, q = m0 % g.Q;
        for (int64_t i = 0; i < mt; q = 0, ++p) {
          const int64_t len = std::min(g.Q - q, mt - i), ih = p * g.sh - g.pt + r * g.dh;
          float* d = row + i - q;  // d[q'] is output column q' of this output row
          if (ih < 0 || ih >= g.H) {
            Op::pad(d + q, len);
          } else {
            const int64_t a = std::clamp(qlo, q, q + len), b = std::clamp(qhi, a, q + len);
            float* line = plane + ih * g.W + off;
            Op::pad(d + q, a - q);
            if (g.sw == 1) Op::run(d + a, line + a, b - a); else Op::run(d + a, line + a * g.sw, b - a, g.sw);
            Op::pad(d + b, q + len - b);
          }
          i += len;
        }
      }
  }
}

constexpr int64_t V = 16;  // floats per vector block (one AVX-512 register, two AVX2 ones)

// Thread-local tile buffers, kept between calls so no call pays page faults for fresh memory; 64-byte aligned so
// vector stores into cols never straddle cache lines.
float* scratch(int which, int64_t n) {
  static thread_local std::vector<float> bufs[3];
  if ((int64_t)bufs[which].size() < n + 16) bufs[which].resize(n + 16);
  const auto addr = reinterpret_cast<uintptr_t>(bufs[which].data());
  return reinterpret_cast<float*>((addr + 63) & ~uintptr_t(63));
}

// scratch(which, n) with its n floats zeroed: padded copies whose border every later write leaves as it is
float* zeroed_scratch(int which, int64_t n) {
  float* buf = scratch(which, n);
  zero(buf, n);
  return buf;
}

int64_t tiles_per_image(const Geom& g, int64_t MT) { return (g.P * g.Q + MT - 1) / MT; }

// out[j·ldo + m] (+)= Σ_t w[j·ldw + t] · cols[t·ld + m] for j < nj, m < mt: the GEMM of a conv with one input
// channel per group (strided NCHW), whose reduction (R·S taps) is too short for the GEMM kernel; 64 pixels per
// register block.
void small_gemm(float* out, int64_t ldo, const float* w, int64_t ldw, const float* cols, int64_t ld, int64_t nj,
                int64_t nt, int64_t mt, bool acc) {
  constexpr int64_t B = 64;
  for (int64_t j = 0; j < nj; ++j)
    for (int64_t m0 = 0; m0 < mt; m0 += B) {
      float* o = out + j * ldo + m0;
      const float* wj = w + j * ldw;
      float r[B];
      if (m0 + B <= mt) {
        for (int64_t k = 0; k < B; ++k) r[k] = acc ? o[k] : 0.f;
        for (int64_t t = 0; t < nt; ++t) {
          const float wv = wj[t], *c = cols + t * ld + m0;
#pragma omp simd
          for (int64_t k = 0; k < B; ++k) r[k] += wv * c[k];
        }
        for (int64_t k = 0; k < B; ++k) o[k] = r[k];
      } else {
        const int64_t len = mt - m0;
        for (int64_t k = 0; k < len; ++k) r[k] = acc ? o[k] : 0.f;
        for (int64_t t = 0; t < nt; ++t)
          for (int64_t k = 0; k < len; ++k) r[k] += wj[t] * cols[t * ld + m0 + k];
        for (int64_t k = 0; k < len; ++k) o[k] = r[k];
      }
    }
}

// Σ_m a[m], in V lanes
inline float sum(const float* __restrict a, int64_t n) {
  float r[V] = {};
  int64_t m = 0;
  for (; m + V <= n; m += V)
#pragma omp simd
    for (int64_t j = 0; j < V; ++j) r[j] += a[m + j];
  float total = 0.f;
  for (; m < n; ++m) total += a[m];
  for (int64_t j = 0; j < V; ++j) total += r[j];
  return total;
}

// Σ_m a[m] · b[m]
inline float dot(const float* __restrict a, const float* __restrict b, int64_t n) {
  float r[V] = {};
  int64_t m = 0;
  for (; m + V <= n; m += V)
#pragma omp simd
    for (int64_t j = 0; j < V; ++j) r[j] += a[m + j] * b[m + j];
  float sum = 0.f;
  for (; m < n; ++m) sum += a[m] * b[m];
  for (int64_t j = 0; j < V; ++j) sum += r[j];
  return sum;
}

// gw (wsize) and gb (K) = the sums of the nt per-thread partials, each laid out [gw part | gb part].
void sum_partials(const std::vector<float>& partial, int nt, int64_t wsize, int64_t K, float* gw, float* gb) {
  for (int t = 0; t < nt && !partial.empty(); ++t) {
    const float* pw = partial.data() + (size_t)t * (wsize + K);
    if (gw) {
      if (t == 0) copy(gw, pw, wsize); else add(gw, pw, wsize);
    }
    if (gb) {
      if (t == 0) copy(gb, pw + wsize, K); else add(gb, pw + wsize, K);
    }
  }
}

// ---- depthwise convs (C == G == K): the cols are a view of the input, never copied -------------------------------
// Each channel's GEMM is one R·S-long dot product per pixel, cols[m, (r, s)] = x[n, c, p·sh − pt + r·dh,
// q·sw − pl + s·dw], and every cols entry is read by exactly one product: building cols would add a write and a read
// of R·S× the input for nothing. So the products read that strided view of the input in place (the zero-copy im2col
// of a 1×1 conv, generalised): per output pixel R·S loads and fused multiply-adds, input and output touched once.
// Vectors run along the contiguous dimension: channels in NHWC (taps in the padding are skipped: they add zero),
// output columns in NCHW (stride-1 rows, read from a zero-padded copy of the plane, ≤ 4 KiB for a 28×28 plane).
// The input gradient of a stride-1 conv is the forward conv of grad_y with the kernel flipped and padding
// (R−1)·dh − pt (a "full" conv): the same kernel, no col2im. Strided NHWC convs scatter-add instead.
typedef float vf __attribute__((vector_size(4 * V)));
template <class T> inline T ld(const float* p) { T v; std::memcpy(&v, p, sizeof v); return v; }
template <class T> inline void st(float* p, T v) { std::memcpy(p, &v, sizeof v); }
// the first n ≤ V floats at p, the other lanes zero (a masked load: as cheap as a whole one)
inline vf upto(const float* p, int64_t n) {
#ifdef __AVX512F__
  return (vf)_mm512_maskz_loadu_ps(n >= V ? (__mmask16)0xffff : tail(n), p);
#else
  if (n >= V) return ld<vf>(p);
  vf v{};
  for (int64_t j = 0; j < n; ++j) v[j] = p[j];
  return v;
#endif
}
inline float hsum(vf v) {
  float s = 0.f;
#pragma GCC unroll 16
  for (int64_t j = 0; j < V; ++j) s += v[j];
  return s;
}

// Output pixels [qa, qb) of one row whose tap s reads an input column inside the image: 0 ≤ q·sw − pl + s·dw < W.
inline void taps_inside(const Geom& g, int64_t s, int64_t& qa, int64_t& qb) {
  const int64_t lo = g.pl - s * g.dw, hi = g.W - 1 + g.pl - s * g.dw;
  qa = lo <= 0 ? 0 : std::min(g.Q, (lo + g.sw - 1) / g.sw);
  qb = hi < 0 ? 0 : std::min(g.Q, hi / g.sw + 1);
}

// rows[r] = input row ih = p·sh − pt + r·dh of image `img` (H, W, C), or null in the padding
template <class F>
inline void tap_rows(const Geom& g, F* img, int64_t p, F** rows) {
  for (int64_t r = 0; r < g.R; ++r) {
    const int64_t ih = p * g.sh - g.pt + r * g.dh;
    rows[r] = ih >= 0 && ih < g.H ? img + ih * g.W * g.C : nullptr;
  }
}

// One NHWC output row, channels [c, c + lanes of T): out[q, c] = b[c] + Σ_{r,s} x[ih_r, q·sw − pl + s·dw, c] ·
// w[r, s, c] over the taps inside the image; four pixels at a time where all S taps are inside, else one by one.
template <class T>
void dw_row(const Geom& g, const float* const* rows, const float* w, const float* bias, float* out, int64_t c) {
  const int64_t C = g.C, S = g.S, step = g.sw * C;
  const T b = bias ? ld<T>(bias + c) : T{};
  int64_t qlo, qhi, unused;
  taps_inside(g, 0, qlo, unused);
  taps_inside(g, S - 1, unused, qhi);
  auto edge = [&](int64_t q) {
    T a = b;
    for (int64_t r = 0; r < g.R; ++r)
      for (int64_t s = 0; s < S && rows[r]; ++s) {
        const int64_t iw = q * g.sw - g.pl + s * g.dw;
        if (iw >= 0 && iw < g.W) a += ld<T>(rows[r] + iw * C + c) * ld<T>(w + (r * S + s) * C + c);
      }
    st(out + q * C + c, a);
  };
  int64_t q = 0;
  for (; q < std::min(qlo, g.Q); ++q) edge(q);
  for (; q + 4 <= qhi; q += 4) {
    T a0 = b, a1 = b, a2 = b, a3 = b;
    for (int64_t r = 0; r < g.R; ++r) {
      if (!rows[r]) continue;
      const float* xr = rows[r] + (q * g.sw - g.pl) * C + c;
      for (int64_t s = 0; s < S; ++s) {
        const T wv = ld<T>(w + (r * S + s) * C + c);
        const float* xs = xr + s * g.dw * C;
        a0 += ld<T>(xs) * wv;
        a1 += ld<T>(xs + step) * wv;
        a2 += ld<T>(xs + 2 * step) * wv;
        a3 += ld<T>(xs + 3 * step) * wv;
      }
    }
    st(out + q * C + c, a0);
    st(out + (q + 1) * C + c, a1);
    st(out + (q + 2) * C + c, a2);
    st(out + (q + 3) * C + c, a3);
  }
  for (; q < g.Q; ++q) edge(q);
}

// Depthwise forward, NHWC: y (N, P, Q, C) from x (N, H, W, C) and w (R·S, C); one job per output row.
void dw_fwd_nhwc(const Geom& g, const float* x, const float* w, const float* bias, float* y, int threads) {
  const int64_t full = g.C / V * V;
#pragma omp parallel num_threads(threads)
  {
    std::vector<const float*> rows(g.R);
#pragma omp for schedule(static)
    for (int64_t job = 0; job < g.N * g.P; ++job) {
      const int64_t n = job / g.P, p = job % g.P;
      tap_rows(g, x + n * g.H * g.W * g.C, p, rows.data());
      float* out = y + job * g.Q * g.C;
      int64_t c = 0;
      for (; c < full; c += V) dw_row<vf>(g, rows.data(), w, bias, out, c);
      for (; c < g.C; ++c) dw_row<float>(g, rows.data(), w, bias, out, c);
    }
  }
}

// The stride-1 input gradient as a forward conv ("full" conv with the kernel flipped): grad_y (K channels, P × Q)
// is its input, grad_x (C channels, H × W) its output, padding (R−1)·dh − pt (negative crops).
Geom transposed(const Geom& g) {
  return Geom{g.N, g.K, g.P, g.Q, g.C, g.R, g.S, g.H, g.W, 1, 1, (g.R - 1) * g.dh - g.pt, (g.S - 1) * g.dw - g.pl,
              g.dh, g.dw, g.G};
}

void pack(const Geom& g, int64_t* out) {
  const int64_t v[16] = {g.N, g.C, g.H, g.W, g.K, g.R, g.S, g.P, g.Q, g.sh, g.sw, g.pt, g.pl, g.dh, g.dw, g.G};
  std::copy(v, v + 16, out);
}

// the tile (output pixels) of the transposed conv whose cols rows are R·S·K long instead of R·S·C
int64_t transposed_tile(const Geom& g, int64_t MT) { return std::clamp<int64_t>(MT * g.C / g.K / 16 * 16, 16, 512); }

// the weight with its taps reversed: w (taps × ld), per channel tap t ↦ R·S − 1 − t, i.e. (r, s) ↦ (R−1−r, S−1−s)
std::vector<float> flipped(const float* w, int64_t taps, int64_t ld, bool tap_major) {
  std::vector<float> f(taps * ld);
  for (int64_t t = 0; t < taps; ++t)
    for (int64_t c = 0; c < ld; ++c)
      if (tap_major) f[t * ld + c] = w[(taps - 1 - t) * ld + c]; else f[c * taps + t] = w[c * taps + taps - 1 - t];
  return f;
}

// Weight (and bias) gradient of one NHWC output row, channels [c, c + lanes of T):
// gw[r, s, c] += Σ_q x[ih_r, q·sw − pl + s·dw, c] · gy[q, c] over the pixels whose tap is inside; gb[c] += Σ_q gy.
template <class T>
void dw_wgrad_row(const Geom& g, const float* const* rows, const float* gy, float* gw, float* gb, int64_t c) {
  const int64_t C = g.C, step = g.sw * C;
  for (int64_t r = 0; r < g.R && gw; ++r)
    for (int64_t s = 0; s < g.S && rows[r]; ++s) {
      int64_t q, qb;
      taps_inside(g, s, q, qb);
      const float* xs = rows[r] + (q * g.sw - g.pl + s * g.dw) * C + c;
      const float* dy = gy + q * C + c;
      T a0{}, a1{}, a2{}, a3{};
      for (; q + 4 <= qb; q += 4, xs += 4 * step, dy += 4 * C) {
        a0 += ld<T>(xs) * ld<T>(dy);
        a1 += ld<T>(xs + step) * ld<T>(dy + C);
        a2 += ld<T>(xs + 2 * step) * ld<T>(dy + 2 * C);
        a3 += ld<T>(xs + 3 * step) * ld<T>(dy + 3 * C);
      }
      for (; q < qb; ++q, xs += step, dy += C) a0 += ld<T>(xs) * ld<T>(dy);
      float* d = gw + (r * g.S + s) * C + c;
      st(d, ld<T>(d) + ((a0 + a1) + (a2 + a3)));
    }
  if (gb) {
    T a{};
    for (int64_t q = 0; q < g.Q; ++q) a += ld<T>(gy + q * C + c);
    st(gb + c, ld<T>(gb + c) + a);
  }
}

// col2im of one NHWC output row for strided convs: gx[ih_r, q·sw − pl + s·dw, c] += gy[q, c] · w[r, s, c]
template <class T>
void dw_scatter_row(const Geom& g, float* const* rows, const float* gy, const float* w, int64_t c) {
  const int64_t C = g.C;
  for (int64_t r = 0; r < g.R; ++r)
    for (int64_t s = 0; s < g.S && rows[r]; ++s) {
      int64_t qa, qb;
      taps_inside(g, s, qa, qb);
      const T wv = ld<T>(w + (r * g.S + s) * C + c);
      for (int64_t q = qa; q < qb; ++q) {
        float* d = rows[r] + (q * g.sw - g.pl + s * g.dw) * C + c;
        st(d, ld<T>(d) + ld<T>(gy + q * C + c) * wv);
      }
    }
}

// Depthwise backward, NHWC (w, gw: (R·S, C)). grad_x: the flipped-kernel forward for stride 1, else a scatter with
// one thread per image; grad_W and grad_b: one job per output row, per-thread partials.
void dw_bwd_nhwc(const Geom& g, const float* x, const float* w, const float* gy, float* gx, float* gw, float* gb,
                 int threads) {
  const int64_t C = g.C, HWC = g.H * g.W * C, full = C / V * V, wsize = g.RS() * C;
  if (gx && g.sh == 1 && g.sw == 1) {
    const std::vector<float> wf = flipped(w, g.RS(), C, true);
    dw_fwd_nhwc(transposed(g), gy, wf.data(), nullptr, gx, threads);
  } else if (gx) {
#pragma omp parallel num_threads(threads)
    {
      std::vector<float*> rows(g.R);
#pragma omp for schedule(static)
      for (int64_t n = 0; n < g.N; ++n) {
        zero(gx + n * HWC, HWC);
        for (int64_t p = 0; p < g.P; ++p) {
          tap_rows(g, gx + n * HWC, p, rows.data());
          const float* dy = gy + (n * g.P + p) * g.Q * C;
          int64_t c = 0;
          for (; c < full; c += V) dw_scatter_row<vf>(g, rows.data(), dy, w, c);
          for (; c < C; ++c) dw_scatter_row<float>(g, rows.data(), dy, w, c);
        }
      }
    }
  }
  if (!gw && !gb) return;
  const int nt = (int)std::max<int64_t>(1, std::min<int64_t>(threads, g.N * g.P));
  std::vector<float> partial((size_t)nt * (wsize + C), 0.f);
#pragma omp parallel num_threads(nt)
  {
    std::vector<const float*> rows(g.R);
    float* pw = partial.data() + (size_t)omp_get_thread_num() * (wsize + C);
#pragma omp for schedule(static)
    for (int64_t job = 0; job < g.N * g.P; ++job) {
      tap_rows(g, x + job / g.P * HWC, job % g.P, rows.data());
      const float* dy = gy + job * g.Q * C;
      int64_t c = 0;
      for (; c < full; c += V) dw_wgrad_row<vf>(g, rows.data(), dy, gw ? pw : nullptr, gb ? pw + wsize : nullptr, c);
      for (; c < C; ++c) dw_wgrad_row<float>(g, rows.data(), dy, gw ? pw : nullptr, gb ? pw + wsize : nullptr, c);
    }
  }
  sum_partials(partial, nt, wsize, C, gw, gb);
}

// One plane (H × W) into its zero-padded copy buf (Hb × Wb): buf[i, j] = plane[i − pt, j − pl]. Only the part
// inside the plane is written: the caller zeroes buf once and every plane leaves the border as it found it.
void pad_plane(const float* plane, int64_t H, int64_t W, int64_t pt, int64_t pl, float* buf, int64_t Hb, int64_t Wb) {
  const int64_t a = std::clamp<int64_t>(pl, 0, Wb), b = std::clamp<int64_t>(pl + W, a, Wb);
  for (int64_t i = std::max<int64_t>(0, pt); i < std::min(Hb, pt + H); ++i)
    copy(buf + i * Wb + a, plane + (i - pt) * W + a - pl, b - a);
}

// NCHW planes for stride-1 rows: output columns padded to whole vectors (Qv); the zero-padded input copy
// (Hb × Wb) holds every tap of every padded output column.
struct Planes {
  int64_t Qv, Hb, Wb;
  explicit Planes(const Geom& g)
      : Qv((g.Q + V - 1) / V * V), Hb((g.P - 1) * g.sh + (g.R - 1) * g.dh + 1), Wb(Qv + (g.S - 1) * g.dw) {}
};

// out[i·Qv + j·V + lane] = b + Σ_{r,s} xb[(i·sh + r·dh)·Wb + s·dw + j·V + lane] · w[r, s] for RB output rows and
// B vectors of each: RB·B independent chains of fused multiply-adds hide their latency.
template <int RB, int B>
inline void dw_plane_block(const Geom& g, const float* xb, int64_t Wb, const float* w, float b, float* out,
                           int64_t Qv) {
  vf a[RB][B];
  for (int i = 0; i < RB; ++i)
    for (int j = 0; j < B; ++j) a[i][j] = vf{} + b;
  for (int64_t r = 0; r < g.R; ++r)
    for (int64_t s = 0; s < g.S; ++s) {
      const float wv = w[r * g.S + s], *xs = xb + r * g.dh * Wb + s * g.dw;
      for (int i = 0; i < RB; ++i)
        for (int j = 0; j < B; ++j) a[i][j] += ld<vf>(xs + i * g.sh * Wb + j * V) * wv;
    }
  for (int i = 0; i < RB; ++i)
    for (int j = 0; j < B; ++j) st(out + i * Qv + j * V, a[i][j]);
}

// RB output rows of one plane into out (RB × Qv), two vectors at a time
template <int RB>
inline void dw_plane_rows(const Geom& g, const Planes& pl, const float* xb, const float* w, float b, float* out) {
  int64_t q = 0;
  for (; q + 2 * V <= pl.Qv; q += 2 * V) dw_plane_block<RB, 2>(g, xb + q, pl.Wb, w, b, out + q, pl.Qv);
  if (q < pl.Qv) dw_plane_block<RB, 1>(g, xb + q, pl.Wb, w, b, out + q, pl.Qv);
}

// Depthwise forward, NCHW, sw == 1: y (N, C, P, Q) from x (N, C, H, W) and w (C, R·S); one job per plane, four
// output rows at a time.
void dw_fwd_nchw(const Geom& g, const float* x, const float* w, const float* bias, float* y, int threads) {
  const Planes pl(g);
  const int64_t RS = g.RS();
#pragma omp parallel num_threads(threads)
  {
    float* xb = zeroed_scratch(0, pl.Hb * pl.Wb);
    float* rows = scratch(1, 4 * pl.Qv);
#pragma omp for schedule(static)
    for (int64_t job = 0; job < g.N * g.C; ++job) {
      const int64_t c = job % g.C;
      pad_plane(x + job * g.H * g.W, g.H, g.W, g.pt, g.pl, xb, pl.Hb, pl.Wb);
      const float b = bias ? bias[c] : 0.f;
      for (int64_t p = 0; p < g.P; p += 4) {
        const int64_t n = std::min<int64_t>(4, g.P - p);
        const float* xr = xb + p * g.sh * pl.Wb;
        if (n == 4) dw_plane_rows<4>(g, pl, xr, w + c * RS, b, rows);
        else
          for (int64_t i = 0; i < n; ++i)
            dw_plane_rows<1>(g, pl, xr + i * g.sh * pl.Wb, w + c * RS, b, rows + i * pl.Qv);
        for (int64_t i = 0; i < n; ++i) copy(y + (job * g.P + p + i) * g.Q, rows + i * pl.Qv, g.Q);
      }
    }
  }
}

// ---- NCHW, stride 1: cols rows as single runs of a padded copy ----------------------------------------------------
// With stride 1, computing the output on the padded grid j = p·Wp + q (Wp = W + pl + pr = Q + (S−1)·dw columns per
// row, the last (S−1)·dw of them discarded) makes every colsT row one contiguous run of the zero-padded planes:
//   colsT[(c, r, s), j] = xpad[c, j + r·dh·Wp + s·dw]
// so a tile of whole padded rows is built with C/G·R·S straight copies (no per-output-row clipping). Cost:
// (S−1)·dw/Wp more GEMM columns (7% for 3×3 on 28×28) and one padded copy of the input per (image, group);
// everything stays in L2.
struct Grid {
  int64_t Wp, Hp, plane, RT, mt;  // RT padded output rows (mt = RT·Wp grid points) per tile
  Grid(const Geom& g, int64_t MT)
      : Wp(g.Q + (g.S - 1) * g.dw), Hp(g.P + (g.R - 1) * g.dh + 1),  // +1 row: the last row's discarded columns
        plane(Hp * Wp), RT(std::clamp<int64_t>(MT / Wp, 1, g.P)), mt(RT * Wp) {}
};

// colsT (C/G·R·S × ld) of the grid points [j0, j0 + n) from the padded planes xp (Cg × plane)
void grid_cols(const Geom& g, const Grid& gr, const float* xp, int64_t j0, int64_t n, float* cols, int64_t ld) {
  for (int64_t c = 0; c < g.Cg(); ++c)
    for (int64_t r = 0; r < g.R; ++r)
      for (int64_t s = 0; s < g.S; ++s)
        copy(cols + ((c * g.R + r) * g.S + s) * ld, xp + c * gr.plane + j0 + r * g.dh * gr.Wp + s * g.dw, n);
}

// the group's Cg input planes of image n into the padded planes xp (border already zero)
void pad_group(const Geom& g, const Grid& gr, const float* x, int64_t n, int64_t gi, float* xp) {
  for (int64_t c = 0; c < g.Cg(); ++c)
    pad_plane(x + (n * g.C + gi * g.Cg() + c) * g.H * g.W, g.H, g.W, g.pt, g.pl, xp + c * gr.plane, gr.Hp, gr.Wp);
}

// NCHW forward, stride 1: one job per (image, group), tiles of RT padded rows:
// out (K/G × mt) = W_g (K/G × C/G·R·S) · colsT, then the kept columns (+ bias) go to y.
void fwd_grid(const Geom& g, const float* x, const float* w, const float* bias, float* y, int64_t MT, int threads) {
  const Grid gr(g, MT);
  const int64_t Cg = g.Cg(), Kg = g.Kg(), CRS = Cg * g.RS(), PQ = g.P * g.Q;
#pragma omp parallel num_threads(threads)
  {
    float* xp = zeroed_scratch(0, Cg * gr.plane);
    float* cols = scratch(1, CRS * gr.mt);
    float* out = scratch(2, Kg * gr.mt);
#pragma omp for schedule(static)
    for (int64_t job = 0; job < g.N * g.G; ++job) {
      const int64_t n = job / g.G, gi = job % g.G;
      pad_group(g, gr, x, n, gi, xp);
      for (int64_t p0 = 0; p0 < g.P; p0 += gr.RT) {
        const int64_t rows = std::min(gr.RT, g.P - p0), j0 = p0 * gr.Wp, mt = rows * gr.Wp;
        grid_cols(g, gr, xp, j0, mt, cols, gr.mt);
        gemm(Kg, mt, CRS, w + gi * Kg * CRS, CRS, cols, gr.mt, out, gr.mt, false);
        for (int64_t k = 0; k < Kg; ++k) {
          float* yk = y + (n * g.K + gi * Kg + k) * PQ + p0 * g.Q;
          const float b = bias ? bias[gi * Kg + k] : 0.f;
          for (int64_t i = 0; i < rows; ++i) {
            const float* o = out + k * gr.mt + i * gr.Wp;
#pragma omp simd
            for (int64_t q = 0; q < g.Q; ++q) yk[i * g.Q + q] = o[q] + b;
          }
        }
      }
    }
    at::native::cpublas::brgemm_release(false);
  }
}

// NCHW weight gradient, stride 1: gw_gᵀ[t, k] = Σ_{p,q} colsT[t, (p, q)] · gy[k, p, q] for t = (c, r, s). colsT
// row t is read in place from the padded planes (row p + r·dh, columns s·dw + q): a GEMM whose both operands run
// along the pixels, done by this micro-kernel rather than brgemm, which would need one of them transposed and, for
// the K/G ≤ 8 outputs of a grouped conv, runs a narrow N at a fraction of its speed. TB cols rows × KB output
// channels of accumulators stay in registers (3 × 8 = 24 vectors) over all pixels of the image; per vector of
// pixels TB + KB loads feed TB·KB fused multiply-adds. The last vector of a row is masked, so the discarded grid
// columns are never read.
template <int TB, int KB>
void wgrad_block(const Geom& g, const Grid& gr, const float* xp, const float* dy, int64_t t0, float* out,
                 int64_t ldo) {
  const int64_t PQ = g.P * g.Q, RS = g.RS();
  const float* a[TB];
  for (int i = 0; i < TB; ++i) {
    const int64_t t = t0 + i, c = t / RS, r = t % RS / g.S, s = t % g.S;
    a[i] = xp + c * gr.plane + r * g.dh * gr.Wp + s * g.dw;
  }
  vf acc[TB][KB];  // every loop over it unrolled, so that it lives in registers
#pragma GCC unroll 8
  for (int i = 0; i < TB; ++i)
#pragma GCC unroll 8
    for (int k = 0; k < KB; ++k) acc[i][k] = vf{};
  for (int64_t p = 0; p < g.P; ++p)
    for (int64_t q = 0; q < g.Q; q += V) {  // one code path for whole and part vectors
      const int64_t n = std::min(V, g.Q - q), ai = p * gr.Wp + q;
      const float* b = dy + p * g.Q + q;
      vf av[TB];
#pragma GCC unroll 8
      for (int i = 0; i < TB; ++i) av[i] = upto(a[i] + ai, n);
#pragma GCC unroll 8
      for (int k = 0; k < KB; ++k) {
        const vf bv = upto(b + k * PQ, n);
#pragma GCC unroll 8
        for (int i = 0; i < TB; ++i) acc[i][k] += av[i] * bv;
      }
    }
#pragma GCC unroll 8
  for (int i = 0; i < TB; ++i)
#pragma GCC unroll 8
    for (int k = 0; k < KB; ++k) out[(t0 + i) * ldo + k] += hsum(acc[i][k]);
}

// all C/G·R·S cols rows against KB output channels: three rows at a time, then one
template <int KB>
void wgrad_channels(const Geom& g, const Grid& gr, const float* xp, const float* dy, float* out, int64_t ldo) {
  const int64_t CRS = g.Cg() * g.RS();
  int64_t t = 0;
  for (; t + 3 <= CRS; t += 3) wgrad_block<3, KB>(g, gr, xp, dy, t, out, ldo);
  for (; t < CRS; ++t) wgrad_block<1, KB>(g, gr, xp, dy, t, out, ldo);
}

// NCHW weight (and bias) gradient, stride 1: one job per (image, group), per-thread partials gw (G, C/G·R·S, K/G).
void wgrad_grid(const Geom& g, const float* x, const float* gy, float* gw, float* gb, int threads) {
  const Grid gr(g, g.P * g.Q);
  const int64_t Cg = g.Cg(), Kg = g.Kg(), CRS = Cg * g.RS(), PQ = g.P * g.Q, wsize = g.K * CRS;
  const int nt = (int)std::max<int64_t>(1, std::min<int64_t>(threads, g.N * g.G));
  std::vector<float> partial((size_t)nt * (wsize + g.K), 0.f);
#pragma omp parallel num_threads(nt)
  {
    float* xp = zeroed_scratch(0, Cg * gr.plane);
    float* pw = partial.data() + (size_t)omp_get_thread_num() * (wsize + g.K);
#pragma omp for schedule(static)
    for (int64_t job = 0; job < g.N * g.G; ++job) {
      const int64_t n = job / g.G, gi = job % g.G;
      const float* dy = gy + (n * g.K + gi * Kg) * PQ;
      for (int64_t k = 0; k < Kg && gb; ++k) pw[wsize + gi * Kg + k] += sum(dy + k * PQ, PQ);
      if (!gw) continue;
      pad_group(g, gr, x, n, gi, xp);
      float* out = pw + gi * CRS * Kg;
      int64_t k = 0;
      for (; k + 8 <= Kg; k += 8) wgrad_channels<8>(g, gr, xp, dy + k * PQ, out + k, Kg);
      if (k + 4 <= Kg) wgrad_channels<4>(g, gr, xp, dy + k * PQ, out + k, Kg), k += 4;
      if (k + 2 <= Kg) wgrad_channels<2>(g, gr, xp, dy + k * PQ, out + k, Kg), k += 2;
      if (k < Kg) wgrad_channels<1>(g, gr, xp, dy + k * PQ, out + k, Kg);
    }
  }
  sum_partials(partial, nt, wsize, g.K, gw, gb);
}

// Depthwise backward, NCHW, stride 1 (w, gw: (C, R·S)): grad_x is the flipped-kernel forward; the weight and bias
// gradients are the grouped ones with C/G = K/G = 1.
void dw_bwd_nchw(const Geom& g, const float* x, const float* w, const float* gy, float* gx, float* gw, float* gb,
                 int threads) {
  if (gx) {
    const std::vector<float> wf = flipped(w, g.RS(), g.C, false);
    dw_fwd_nchw(transposed(g), gy, wf.data(), nullptr, gx, threads);
  }
  if (gw || gb) wgrad_grid(g, x, gy, gw, gb, threads);
}

// ---- layout: NCHW → NHWC ---------------------------------------------------------------------------------------
// y (M × L) = x (L × M)ᵀ for one image (x: C planes of H·W pixels; y: H·W pixels of C channels), in 16×16 blocks
// transposed in registers (AVX-512: four rounds of 16 shuffles), so both sides move whole cache lines; the edges
// (C or H·W not a multiple of 16) go element by element. torch's strided copy takes 4–6× a plain copy here.
void transpose(const float* x, float* y, int64_t L, int64_t M) {
  int64_t l0 = 0;
#ifdef __AVX512F__
  for (; l0 + 16 <= L; l0 += 16) {
    int64_t m0 = 0;
    for (; m0 + 16 <= M; m0 += 16) {
      __m512 r[16], t[16];
      for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(x + (l0 + i) * M + m0);
      for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
      }
      for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
        r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xee);
        r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xee);
      }
      for (int i = 0; i < 4; ++i) {
        t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
        t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xdd);
        t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xdd);
      }
      for (int i = 0; i < 4; ++i) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
        r[i + 4] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0x88);
        r[i + 12] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0xdd);
      }
      for (int i = 0; i < 16; ++i) _mm512_storeu_ps(y + (m0 + i) * L + l0, r[i]);
    }
    for (; m0 < M; ++m0)
      for (int64_t i = 0; i < 16; ++i) y[m0 * L + l0 + i] = x[(l0 + i) * M + m0];
  }
#endif
  constexpr int64_t B = 16;
  for (; l0 < L; l0 += B)
    for (int64_t m0 = 0; m0 < M; m0 += B)
      for (int64_t m = m0; m < std::min(M, m0 + B); ++m)
        for (int64_t l = l0; l < std::min(L, l0 + B); ++l) y[m * L + l] = x[l * M + m];
}

}  // namespace

extern "C" {

// Every entry point returns the branch it took (a FWD_*/BWD_* code below), which the caller reports as the row's
// backend: what ran is told by the code that ran it, not guessed from the arguments.
enum { FWD_DEPTHWISE_DIRECT = 1, FWD_POINTWISE = 2, FWD_DEPTHWISE_COLS = 3, FWD_COLS = 4, FWD_GRID = 5,
       FWD_ONE_CHANNEL = 6 };
// Backward codes: DX_* · 16 + DW_* (0 = that gradient was not asked for).
enum { DX_DEPTHWISE_DIRECT = 1, DX_FLIPPED_FORWARD = 2, DX_DEPTHWISE_COL2IM = 3, DX_POINTWISE = 4, DX_COL2IM = 5,
       DX_ONE_CHANNEL_COL2IM = 6 };
enum { DW_DEPTHWISE_DIRECT = 1, DW_DEPTHWISE_COLS = 2, DW_POINTWISE = 3, DW_COLS = 4, DW_GRID = 5,
       DW_ONE_CHANNEL = 6 };

// y (N·P·Q × K) = conv(x); wt is (G, R, S, Cg, Kg) — or (R·S, K) for depthwise; bias may be null.
int conv_fwd(const int64_t* gp, const float* x, const float* wt, const float* bias, float* y, int64_t MT,
             int threads) {
  const Geom g = geom(gp);
  if (g.depthwise() && g.Kg() == 1) {
    dw_fwd_nhwc(g, x, wt, bias, y, threads);
    return FWD_DEPTHWISE_DIRECT;
  }
  const int64_t PQ = g.P * g.Q, T = tiles_per_image(g, MT), row = g.row(), RS = g.RS(), Cg = g.Cg(), Kg = g.Kg();
#pragma omp parallel num_threads(threads)
  {
    float* cols = scratch(0, MT * row);
#pragma omp for schedule(static)
    for (int64_t job = 0; job < g.N * T; ++job) {
      const int64_t n = job / T, m0 = (job % T) * MT, mt = std::min(MT, PQ - m0);
      float* out = y + (n * PQ + m0) * g.K;
      const float* a = cols;
      if (g.pointwise()) a = x + (n * PQ + m0) * g.C; else build_cols(g, x, n, m0, mt, cols);
      if (g.depthwise()) {  // channel multiplier Kg > 1: out[m, c·Kg + j] = Σ_t cols[m, t, c] · wt[t, c·Kg + j]
        for (int64_t i = 0; i < mt; ++i) {
          float* o = out + i * g.K;
          if (bias) copy(o, bias, g.K); else zero(o, g.K);
          for (int64_t t = 0; t < RS; ++t)
            for (int64_t k = 0; k < g.K; ++k) o[k] += cols[i * row + t * g.C + k / Kg] * wt[t * g.K + k];
        }
        continue;
      }
      if (bias)
        for (int64_t i = 0; i < mt; ++i) copy(out + i * g.K, bias, g.K);
      for (int64_t gi = 0; gi < g.G; ++gi)
        gemm(mt, Kg, RS * Cg, a + gi * RS * Cg, row, wt + gi * RS * Cg * Kg, Kg, out + gi * Kg, g.K, bias != nullptr);
    }
    at::native::cpublas::brgemm_release(false);
  }
  return g.depthwise() ? FWD_DEPTHWISE_COLS : g.pointwise() ? FWD_POINTWISE : FWD_COLS;
}

// Backward. gy (N·P·Q × K). w is (G, Kg, R, S, Cg) — or (R·S, K) for depthwise. Outputs (each may be null):
// gx (N, H, W, C), zeroed here; gw with w's layout; gb (K).
int conv_bwd(const int64_t* gp, const float* x, const float* w, const float* gy, float* gx, float* gw, float* gb,
             int64_t MT, int threads) {
  const Geom g = geom(gp);
  if (g.depthwise() && g.Kg() == 1) {
    dw_bwd_nhwc(g, x, w, gy, gx, gw, gb, threads);
    return (gx ? DX_DEPTHWISE_DIRECT * 16 : 0) + ((gw || gb) ? DW_DEPTHWISE_DIRECT : 0);
  }
  const int dw_code = !(gw || gb) ? 0 : g.depthwise() ? DW_DEPTHWISE_COLS : g.pointwise() ? DW_POINTWISE : DW_COLS;
  int dx_code = !gx ? 0 : g.depthwise() ? DX_DEPTHWISE_COL2IM : g.pointwise() ? DX_POINTWISE : DX_COL2IM;
  const int64_t PQ = g.P * g.Q, T = tiles_per_image(g, MT), row = g.row(), RS = g.RS(), Cg = g.Cg(), Kg = g.Kg();
  if (gx && g.sh == 1 && g.sw == 1 && !g.pointwise() && !g.depthwise()) {  // grad_x: the flipped-kernel forward
    std::vector<float> wf(g.K * RS * Cg);  // its weight (G, R, S, K/G, C/G): w'[g, t, k, c] = w[g, k, R·S − 1 − t, c]
    for (int64_t gi = 0; gi < g.G; ++gi)
      for (int64_t t = 0; t < RS; ++t)
        for (int64_t k = 0; k < Kg; ++k)
          copy(wf.data() + ((gi * RS + t) * Kg + k) * Cg, w + ((gi * Kg + k) * RS + RS - 1 - t) * Cg, Cg);
    int64_t tp[16];
    pack(transposed(g), tp);
    conv_fwd(tp, gy, wf.data(), nullptr, gx, transposed_tile(g, MT), threads);
    gx = nullptr;
    dx_code = DX_FLIPPED_FORWARD;
    if (!gw && !gb) return dx_code * 16;
  }
  const int64_t wsize = g.K * RS * Cg;
  const int nt = (int)std::max<int64_t>(1, std::min<int64_t>(threads, g.N));
  std::vector<float> partial((gw || gb) ? (size_t)nt * (wsize + g.K) : 0, 0.f);
#pragma omp parallel num_threads(nt)
  {
    float* cols = scratch(0, MT * row);
    float* gcols = scratch(1, MT * row);
    float* gyt = scratch(2, MT * g.K);
    float* pw = partial.empty() ? nullptr : partial.data() + (size_t)omp_get_thread_num() * (wsize + g.K);
    float* pb = pw ? pw + wsize : nullptr;
#pragma omp for schedule(static)
    for (int64_t n = 0; n < g.N; ++n) {
      if (gx) zero(gx + n * g.H * g.W * g.C, g.H * g.W * g.C);
      for (int64_t tile = 0; tile < T; ++tile) {
        const int64_t m0 = tile * MT, mt = std::min(MT, PQ - m0);
        const float* dy = gy + (n * PQ + m0) * g.K;
        if (gb)
          for (int64_t i = 0; i < mt; ++i) add(pb, dy + i * g.K, g.K);
        if (gx) {  // grad_cols = grad_y @ Wᵀ, then col2im
          if (g.depthwise()) {  // multiplier Kg > 1: grad_cols[m, t, c] = Σ_j grad_y[m, c·Kg + j] · w[t, c·Kg + j]
            for (int64_t i = 0; i < mt; ++i)
              for (int64_t t = 0; t < RS; ++t)
                for (int64_t c = 0; c < g.C; ++c) {
                  float a = 0.f;
                  for (int64_t j = 0; j < Kg; ++j) a += dy[i * g.K + c * Kg + j] * w[t * g.K + c * Kg + j];
                  gcols[i * row + t * g.C + c] = a;
                }
          } else if (g.pointwise()) {  // grad_cols is the input gradient itself
            gemm(mt, g.C, g.K, dy, g.K, w, g.C, gx + (n * PQ + m0) * g.C, g.C, false);
          } else {
            for (int64_t gi = 0; gi < g.G; ++gi)
              gemm(mt, RS * Cg, Kg, dy + gi * Kg, g.K, w + gi * Kg * RS * Cg, RS * Cg, gcols + gi * RS * Cg, row,
                   false);
          }
          if (!g.pointwise()) col2im(g, gcols, n, m0, mt, gx);
        }
        if (gw) {  // grad_W += grad_yᵀ @ cols
          const float* b = cols;
          if (g.pointwise()) b = x + (n * PQ + m0) * g.C; else build_cols(g, x, n, m0, mt, cols);
          if (g.depthwise()) {  // gw[t, k] += Σ_m cols[m, t, k / Kg] · grad_y[m, k]
            for (int64_t i = 0; i < mt; ++i)
              for (int64_t t = 0; t < RS; ++t)
                for (int64_t k = 0; k < g.K; ++k) pw[t * g.K + k] += cols[i * row + t * g.C + k / Kg] * dy[i * g.K + k];
          } else {
            for (int64_t i = 0; i < mt; ++i)  // grad_y tile transposed: (K × mt)
              for (int64_t k = 0; k < g.K; ++k) gyt[k * mt + i] = dy[i * g.K + k];
            for (int64_t gi = 0; gi < g.G; ++gi)
              gemm(Kg, RS * Cg, mt, gyt + gi * Kg * mt, mt, b + gi * RS * Cg, row, pw + gi * Kg * RS * Cg, RS * Cg,
                   true);
          }
        }
      }
    }
    at::native::cpublas::brgemm_release(false);
  }
  sum_partials(partial, nt, wsize, g.K, gw, gb);
  return dx_code * 16 + dw_code;
}


// NCHW forward: y (N, K, P, Q) = conv(x (N, C, H, W)); w is the weight as given, (G, K/G, C/G·R·S).
// One GEMM per (image, group, tile): y[n, group's K/G rows, tile] = W_g (K/G × C/G·R·S) · colsT (C/G·R·S × mt),
// written straight into the NCHW output (leading dimension P·Q).
int conv_fwd_nchw(const int64_t* gp, const float* x, const float* w, const float* bias, float* y, int64_t MT,
                  int threads) {
  const Geom g = geom(gp);
  if (g.depthwise() && g.Kg() == 1 && g.sw == 1) {
    dw_fwd_nchw(g, x, w, bias, y, threads);
    return FWD_DEPTHWISE_DIRECT;
  }
  if (g.sh == 1 && g.sw == 1 && !g.pointwise_t()) {
    fwd_grid(g, x, w, bias, y, MT, threads);
    return FWD_GRID;
  }
  const int64_t PQ = g.P * g.Q, T = tiles_per_image(g, MT), Cg = g.Cg(), Kg = g.Kg(), CRS = Cg * g.RS();
#pragma omp parallel num_threads(threads)
  {
    float* cols = scratch(0, MT * CRS);
#pragma omp for schedule(static)
    for (int64_t job = 0; job < g.N * g.G * T; ++job) {
      const int64_t n = job / (g.G * T), gi = job / T % g.G, m0 = job % T * MT, mt = std::min(MT, PQ - m0);
      float* img = const_cast<float*>(x) + n * g.C * g.H * g.W;
      const float* b = cols;
      int64_t ldb = MT;
      if (g.pointwise_t()) b = img + gi * Cg * PQ + m0, ldb = PQ;
      else walk_t<Build>(g, img, cols, MT, gi * Cg, Cg, m0, mt);
      float* out = y + (n * g.K + gi * Kg) * PQ + m0;
      if (bias)
        for (int64_t j = 0; j < Kg; ++j) std::fill(out + j * PQ, out + j * PQ + mt, bias[gi * Kg + j]);
      if (Cg == 1) small_gemm(out, PQ, w + gi * Kg * CRS, CRS, b, ldb, Kg, CRS, mt, bias != nullptr);
      else gemm(Kg, mt, CRS, w + gi * Kg * CRS, CRS, b, ldb, out, PQ, bias != nullptr);
    }
    at::native::cpublas::brgemm_release(false);
  }
  return g.Cg() == 1 ? FWD_ONE_CHANNEL : g.pointwise_t() ? FWD_POINTWISE : FWD_COLS;
}

// NCHW backward. gy (N, K, P, Q); wT is the weight transposed per group, (G, C/G·R·S, K/G). Outputs (each may be
// null): gx (N, C, H, W); gw (G, C/G·R·S, K/G); gb (K). Strided convs: one thread per (image, group), whose col2im
// touches only that image's group channels, so no two threads add to one pixel.
int conv_bwd_nchw(const int64_t* gp, const float* x, const float* wT, const float* gy, float* gx,
                  float* gw, float* gb, int64_t MT, int threads) {
  const Geom g = geom(gp);
  if (g.depthwise() && g.Kg() == 1 && g.sh == 1 && g.sw == 1) {
    dw_bwd_nchw(g, x, wT, gy, gx, gw, gb, threads);
    return (gx ? DX_DEPTHWISE_DIRECT * 16 : 0) + ((gw || gb) ? DW_DEPTHWISE_DIRECT : 0);
  }
  if (g.sh == 1 && g.sw == 1 && !g.pointwise_t()) {  // grad_x: the flipped-kernel forward, no col2im
    if (gx) {  // its weight (G, C/G, K/G·R·S): w'[g, c, (k, t)] = W[g·Kg + k, c, R·S−1−t] = wT[g, (c, R·S−1−t), k]
      const int64_t Cg = g.Cg(), Kg = g.Kg(), RS = g.RS();
      std::vector<float> wf(g.K * Cg * RS);
      for (int64_t gi = 0; gi < g.G; ++gi)
        for (int64_t c = 0; c < Cg; ++c)
          for (int64_t k = 0; k < Kg; ++k)
            for (int64_t t = 0; t < RS; ++t)
              wf[((gi * Cg + c) * Kg + k) * RS + t] = wT[(gi * Cg * RS + c * RS + RS - 1 - t) * Kg + k];
      fwd_grid(transposed(g), gy, wf.data(), nullptr, gx, transposed_tile(g, MT), threads);
    }
    if (gw || gb) wgrad_grid(g, x, gy, gw, gb, threads);
    return (gx ? DX_FLIPPED_FORWARD * 16 : 0) + ((gw || gb) ? DW_GRID : 0);
  }
  const int64_t PQ = g.P * g.Q, T = tiles_per_image(g, MT), Cg = g.Cg(), Kg = g.Kg(), CRS = Cg * g.RS();
  const int64_t wsize = g.K * CRS;
  const int nt = (int)std::max<int64_t>(1, std::min<int64_t>(threads, g.N * g.G));
  std::vector<float> partial((gw || gb) ? (size_t)nt * (wsize + g.K) : 0, 0.f);
#pragma omp parallel num_threads(nt)
  {
    float* cols = scratch(0, MT * CRS);
    float* gcols = scratch(1, MT * CRS);
    float* gyt = scratch(2, MT * Kg);
    float* pw = partial.empty() ? nullptr : partial.data() + (size_t)omp_get_thread_num() * (wsize + g.K);
    float* pb = pw ? pw + wsize : nullptr;
#pragma omp for schedule(static)
    for (int64_t job = 0; job < g.N * g.G; ++job) {
      const int64_t n = job / g.G, gi = job % g.G;
      float* img = const_cast<float*>(x) + n * g.C * g.H * g.W;
      float* gimg = gx ? gx + n * g.C * g.H * g.W : nullptr;
      if (gimg) zero(gimg + gi * Cg * g.H * g.W, Cg * g.H * g.W);
      for (int64_t tile = 0; tile < T; ++tile) {
        const int64_t m0 = tile * MT, mt = std::min(MT, PQ - m0);
        const float* dy = gy + (n * g.K + gi * Kg) * PQ + m0;  // (K/G × mt), leading dimension P·Q
        if (gb)
          for (int64_t j = 0; j < Kg; ++j)
            pb[gi * Kg + j] += sum(dy + j * PQ, mt);
        if (gimg) {  // grad_colsT = W_gᵀ · grad_y, then col2im
          if (g.pointwise_t()) {
            gemm(CRS, mt, Kg, wT + gi * CRS * Kg, Kg, dy, PQ, gimg + gi * Cg * PQ + m0, PQ, false);
          } else {
            if (Cg == 1) small_gemm(gcols, MT, wT + gi * CRS * Kg, Kg, dy, PQ, CRS, Kg, mt, false);
            else gemm(CRS, mt, Kg, wT + gi * CRS * Kg, Kg, dy, PQ, gcols, MT, false);
            walk_t<Scatter>(g, gimg, gcols, MT, gi * Cg, Cg, m0, mt);
          }
        }
        if (gw) {  // grad_W_gᵀ += colsT · grad_yᵀ
          const float* a = cols;
          int64_t lda = MT;
          if (g.pointwise_t()) a = img + gi * Cg * PQ + m0, lda = PQ;
          else walk_t<Build>(g, img, cols, MT, gi * Cg, Cg, m0, mt);
          if (Cg == 1) {  // gw[k, t] += Σ_m colsT[t, m] · grad_y[k, m]
            for (int64_t j = 0; j < Kg; ++j)
              for (int64_t t = 0; t < CRS; ++t) pw[(gi * CRS + t) * Kg + j] += dot(a + t * lda, dy + j * PQ, mt);
          } else {
            for (int64_t j = 0; j < Kg; ++j)
              for (int64_t m = 0; m < mt; ++m) gyt[m * Kg + j] = dy[j * PQ + m];
            gemm(CRS, Kg, mt, a, lda, gyt, Kg, pw + gi * CRS * Kg, Kg, true);
          }
        }
      }
    }
    at::native::cpublas::brgemm_release(false);
  }
  sum_partials(partial, nt, wsize, g.K, gw, gb);
  const int dx = !gx ? 0 : g.pointwise_t() ? DX_POINTWISE : Cg == 1 ? DX_ONE_CHANNEL_COL2IM : DX_COL2IM;
  const int dw = !(gw || gb) ? 0 : Cg == 1 ? DW_ONE_CHANNEL : g.pointwise_t() ? DW_POINTWISE : DW_COLS;
  return dx * 16 + dw;
}

// y (N, H·W, C) = x (N, C, H·W) with the pixels and channels of each image transposed (NCHW → NHWC)
void nchw_to_nhwc(const float* x, float* y, int64_t N, int64_t C, int64_t HW, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t n = 0; n < N; ++n) transpose(x + n * C * HW, y + n * C * HW, C, HW);
}

}  // extern "C"
