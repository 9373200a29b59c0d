// The TF LSTM cell's pointwise part as two fused loops (see native.py for why and how it is
// built). z holds one layer's gate pre-activations [n, 4H] (blocks i, j, f, o; the forget
// bias added, the j block scaled by 2, so tanh(g) = 2 sigmoid(2g) - 1). Rows are processed in
// blocks whose gates stay in L1/L2; the exponentials run over contiguous buffers so that the
// compiler vectorises them (-ffast-math: libmvec's exp).
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <vector>

namespace {

constexpr int64_t kRows = 64;  // rows per block: 64 x 4H x 4 bytes = 20 KB for H = 20

template <typename T>
inline void sigmoid(const T* in, T* out, int64_t m, T scale) {
#pragma omp simd
  for (int64_t k = 0; k < m; ++k) out[k] = T(1) / (T(1) + std::exp(-scale * in[k]));
}

// h' = o tanh(c'), c' = f c + i j for rows [r0, r1).
template <typename T>
void forward_rows(const T* z, const T* c, T* h, T* cn, int64_t r0, int64_t r1, int64_t H) {
  std::vector<T> s(kRows * 4 * H), tc(kRows * H);
  for (int64_t b = r0; b < r1; b += kRows) {
    const int64_t rows = std::min(kRows, r1 - b);
    sigmoid(z + b * 4 * H, s.data(), rows * 4 * H, T(1));
    for (int64_t r = 0; r < rows; ++r) {
      const T* sr = s.data() + r * 4 * H;
      const T* cr = c + (b + r) * H;
      T* cnr = cn + (b + r) * H;
#pragma omp simd
      for (int64_t u = 0; u < H; ++u)
        cnr[u] = sr[2 * H + u] * cr[u] + sr[u] * (T(2) * sr[H + u] - T(1));
    }
    sigmoid(cn + b * H, tc.data(), rows * H, T(2));
    for (int64_t r = 0; r < rows; ++r) {
      const T* o = s.data() + r * 4 * H + 3 * H;
      const T* t = tc.data() + r * H;
      T* hr = h + (b + r) * H;
#pragma omp simd
      for (int64_t u = 0; u < H; ++u) hr[u] = o[u] * (T(2) * t[u] - T(1));
    }
  }
}

// From the gates z (recomputed by the caller), c, dh, dc: dz' = dL/dz / (-1, 2, 1, 1) per block
// (kernels.GRAD_FACTOR: the caller folds it into the weights) and dc_prev = dL/dc.
template <typename T>
void backward_rows(const T* z, const T* c, const T* dh, const T* dc, T* dz, T* dcp, int64_t r0,
                   int64_t r1, int64_t H) {
  std::vector<T> s(kRows * 4 * H), cn(kRows * H), tc(kRows * H);
  for (int64_t b = r0; b < r1; b += kRows) {
    const int64_t rows = std::min(kRows, r1 - b);
    sigmoid(z + b * 4 * H, s.data(), rows * 4 * H, T(1));
    for (int64_t r = 0; r < rows; ++r) {
      const T* sr = s.data() + r * 4 * H;
      const T* cr = c + (b + r) * H;
#pragma omp simd
      for (int64_t u = 0; u < H; ++u)
        cn[r * H + u] = sr[2 * H + u] * cr[u] + sr[u] * (T(2) * sr[H + u] - T(1));
    }
    sigmoid(cn.data(), tc.data(), rows * H, T(2));
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t row = b + r;
      const T* sr = s.data() + r * 4 * H;
      const T* cr = c + row * H;
      const T* dhr = dh + row * H;
      const T* dcr = dc + row * H;
      T* dzr = dz + row * 4 * H;
      T* dcpr = dcp + row * H;
#pragma omp simd
      for (int64_t u = 0; u < H; ++u) {
        const T i = sr[u], sj = sr[H + u], f = sr[2 * H + u], o = sr[3 * H + u];
        const T t = T(2) * tc[r * H + u] - T(1);
        const T dct = dcr[u] + dhr[u] * o * (T(1) - t * t);
        dzr[u] = dct * (T(1) - T(2) * sj) * i * (T(1) - i);  // -j sigma'_i
        dzr[H + u] = dct * i * sj * (T(1) - sj);
        dzr[2 * H + u] = dct * cr[u] * f * (T(1) - f);
        dzr[3 * H + u] = dhr[u] * t * o * (T(1) - o);
        dcpr[u] = dct * f;
      }
    }
  }
}

// The vector registers the gate loop may keep accumulators in: 24 of AVX-512's 32, 12 of
// AVX2's (or SSE's) 16; the rest hold a weight vector and the broadcast inputs. Tiles sized
// for AVX-512 spill on AVX2 and ran 2.5x slower there (AMD Zen 3).
#if defined(__AVX512F__)
constexpr int kVectorBytes = 64, kAccumulators = 24;
#elif defined(__AVX2__)
constexpr int kVectorBytes = 32, kAccumulators = 12;
#else
constexpr int kVectorBytes = 16, kAccumulators = 12;
#endif

// The gate tile: C columns (dividing N) by R rows, C/lanes x R accumulators in registers.
// The widest C that still leaves R >= 4 rows to share each weight vector (AVX-512, float:
// 80 x 4; AVX2: 16 x 6); measured per instruction set, as each spills differently.
constexpr int kMaxTileRows = 6;
template <typename T, int C>
constexpr int tile_rows() {
  constexpr int vectors = (C * sizeof(T) + kVectorBytes - 1) / kVectorBytes;
  return std::max(1, std::min(kMaxTileRows, kAccumulators / vectors));
}
template <typename T, int N, int C = N>
constexpr int tile_columns() {
  constexpr int lanes = kVectorBytes / sizeof(T);
  // A divisor of N (N = 40, 16 lanes: 10, never 16), at most one vector or whole vectors.
  if constexpr (N % C == 0 && (C <= lanes || (C % lanes == 0 && tile_rows<T, C>() >= 4))) {
    return C;
  } else {
    return tile_columns<T, N, C - 1>();
  }
}

// One tile: R rows' gates in columns [0, C) of z (x, h, w, b, z pointing at the tile).
template <typename T, int N, int C, int R>
inline void gates_tile(const T* x, int64_t nx, const T* h, int64_t nh, const T* w, const T* b,
                       T* z) {
  T acc[R][C];
  for (int q = 0; q < R; ++q)
#pragma omp simd
    for (int u = 0; u < C; ++u) acc[q][u] = b[u];
  for (int64_t k = 0; k < nx; ++k)
    for (int q = 0; q < R; ++q) {
      const T a = x[q * nx + k];
#pragma omp simd
      for (int u = 0; u < C; ++u) acc[q][u] += a * w[k * N + u];
    }
  for (int64_t k = 0; k < nh; ++k)
    for (int q = 0; q < R; ++q) {
      const T a = h[q * nh + k];
#pragma omp simd
      for (int u = 0; u < C; ++u) acc[q][u] += a * w[(nx + k) * N + u];
    }
  for (int q = 0; q < R; ++q)
#pragma omp simd
    for (int u = 0; u < C; ++u) z[q * N + u] = acc[q][u];
}

// z[r] = b + x[r]·Wx + h[r]·Wh for `rows` rows, N = 4H known at compile time: a tile of R rows
// by C columns stays in registers (fixed, so the compiler unrolls it) while each weight vector
// is loaded once for all R rows. ATen's GEMM, called per 256-row block, spends about half its
// time in dispatch and packing at these shapes.
template <typename T, int N>
void gates_rows(const T* x, int64_t nx, const T* h, int64_t nh, const T* w, const T* b, T* z,
                int64_t rows) {
  constexpr int C = tile_columns<T, N>(), R = tile_rows<T, C>();
  static_assert(N % C == 0, "a tile must not run past the row");
  int64_t r = 0;
  for (; r + R <= rows; r += R)
    for (int col = 0; col < N; col += C)
      gates_tile<T, N, C, R>(x + r * nx, nx, h + r * nh, nh, w + col, b + col, z + r * N + col);
  for (; r < rows; ++r)
    for (int col = 0; col < N; col += C)
      gates_tile<T, N, C, 1>(x + r * nx, nx, h + r * nh, nh, w + col, b + col, z + r * N + col);
}

// One block's gates into zb: the register-blocked loop for the usual hidden sizes, else ATen.
template <typename T>
void block_gates(const torch::Tensor& x, const torch::Tensor& h, const torch::Tensor& w,
                 const torch::Tensor& b, torch::Tensor& zb, int64_t r, int64_t rows) {
  const int64_t nx = x.size(1), H = h.size(1);
  const T* xr = x.data_ptr<T>() + r * nx;
  const T* hr = h.data_ptr<T>() + r * H;
  switch (H) {
    case 10: return gates_rows<T, 40>(xr, nx, hr, H, w.data_ptr<T>(), b.data_ptr<T>(),
                                      zb.data_ptr<T>(), rows);
    case 20: return gates_rows<T, 80>(xr, nx, hr, H, w.data_ptr<T>(), b.data_ptr<T>(),
                                      zb.data_ptr<T>(), rows);
    default:
      at::addmm_out(zb, b, x.narrow(0, r, rows), w.narrow(0, 0, nx));
      zb.addmm_(h.narrow(0, r, rows), w.narrow(0, nx, H));
  }
}

// y = ELU(x·Wᵀ + b) for rows [r0, r1), W [H, k] (nn.Linear layout) given as wt = Wᵀ [k, H].
template <typename T>
void linear_elu_rows(const T* x, const T* wt, const T* b, T* y, int64_t r0, int64_t r1,
                     int64_t k_in, int64_t H) {
  for (int64_t r = r0; r < r1; ++r) {
    T* yr = y + r * H;
#pragma omp simd
    for (int64_t u = 0; u < H; ++u) yr[u] = b[u];
    for (int64_t k = 0; k < k_in; ++k) {
      const T a = x[r * k_in + k];
#pragma omp simd
      for (int64_t u = 0; u < H; ++u) yr[u] += a * wt[k * H + u];
    }
  }
  // As the eager kernel: max(p, 0) + exp(min(p, 0)) - 1, over a contiguous run. Ternaries,
  // not std::max/min (whose references keep GCC from calling the vector exp: 10x slower).
  T* yb = y + r0 * H;
#pragma omp simd
  for (int64_t k = 0; k < (r1 - r0) * H; ++k) {
    const T p = yb[k];
    yb[k] = (p > T(0) ? p : T(0)) + std::exp(p < T(0) ? p : T(0)) - T(1);
  }
}

// Rows per cache block of the whole layer: its gates, 256 x 4H x 4 bytes = 80 KB for H = 20,
// stay in L2 between the gate GEMM, the pointwise pass and the backward GEMMs.
constexpr int64_t kBlock = 256;

}  // namespace

// One layer forward: h', c' = cell([x h]·w + b, c), w = W·scale and b as kernels._gate_params.
void lstm_forward(torch::Tensor x, torch::Tensor h, torch::Tensor c, torch::Tensor w,
                  torch::Tensor b, torch::Tensor h_out, torch::Tensor c_out) {
  const int64_t n = c.size(0), H = c.size(1);
  const auto wc = w.contiguous(), bc = b.contiguous();
  AT_DISPATCH_FLOATING_TYPES(c.scalar_type(), "lstm_forward", [&] {
    at::parallel_for(0, n, kBlock, [&](int64_t r0, int64_t r1) {
      // Grad mode is thread-local: worker threads start with it on, and these ops' out=
      // forms refuse inputs that require grad (autograd is the caller's Function).
      at::NoGradGuard no_grad;
      auto z = at::empty({kBlock, 4 * H}, c.options());
      for (int64_t r = r0; r < r1; r += kBlock) {
        const int64_t rows = std::min(kBlock, r1 - r);
        auto zb = z.narrow(0, 0, rows);
        block_gates<scalar_t>(x, h, wc, bc, zb, r, rows);
        forward_rows(zb.data_ptr<scalar_t>() - r * 4 * H, c.data_ptr<scalar_t>(),
                     h_out.data_ptr<scalar_t>(), c_out.data_ptr<scalar_t>(), r, r + rows, H);
      }
    });
  });
}

// One layer backward from the carry: the gates are recomputed block by block, and per block
// dz' (dL/dz / GRAD_FACTOR), d[x h] = dz'·wfᵀ (wf = W·scale·GRAD_FACTOR) and the partial
// weight and bias gradients [x h]ᵀ·dz', Σ dz' (the caller multiplies them by the factor).
// Returns (d[x h] [n, in+H], dc_prev [n, H], dw' [in+H, 4H], db' [4H]).
std::vector<torch::Tensor> lstm_backward(torch::Tensor x, torch::Tensor h, torch::Tensor c,
                                         torch::Tensor w, torch::Tensor b, torch::Tensor wf,
                                         torch::Tensor dh, torch::Tensor dc) {
  const int64_t n = c.size(0), H = c.size(1), n_in = x.size(1);
  const auto wc = w.contiguous(), bc = b.contiguous();
  const auto wft = wf.t();
  auto dxh = at::empty({n, n_in + H}, c.options());
  auto dcp = at::empty({n, H}, c.options());
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(),
                                                               (n + kBlock - 1) / kBlock));
  auto dw = at::zeros({parts, n_in + H, 4 * H}, c.options());
  auto db = at::zeros({parts, 4 * H}, c.options());
  AT_DISPATCH_FLOATING_TYPES(c.scalar_type(), "lstm_backward", [&] {
    at::parallel_for(0, parts, 1, [&](int64_t p0, int64_t p1) {
      at::NoGradGuard no_grad;  // as in lstm_forward
      auto z = at::empty({kBlock, 4 * H}, c.options());
      auto dz = at::empty({kBlock, 4 * H}, c.options());
      for (int64_t p = p0; p < p1; ++p) {
        auto dwx = dw[p].narrow(0, 0, n_in), dwh = dw[p].narrow(0, n_in, H);
        auto dbp = db[p];
        for (int64_t r = n * p / parts; r < n * (p + 1) / parts; r += kBlock) {
          const int64_t rows = std::min(kBlock, n * (p + 1) / parts - r);
          auto zb = z.narrow(0, 0, rows), dzb = dz.narrow(0, 0, rows);
          const auto xb = x.narrow(0, r, rows), hb = h.narrow(0, r, rows);
          block_gates<scalar_t>(x, h, wc, bc, zb, r, rows);
          backward_rows(zb.data_ptr<scalar_t>() - r * 4 * H, c.data_ptr<scalar_t>(),
                        dh.data_ptr<scalar_t>(), dc.data_ptr<scalar_t>(),
                        dzb.data_ptr<scalar_t>() - r * 4 * H, dcp.data_ptr<scalar_t>(), r,
                        r + rows, H);
          auto dxhb = dxh.narrow(0, r, rows);
          at::mm_out(dxhb, dzb, wft);
          dwx.addmm_(xb.t(), dzb);
          dwh.addmm_(hb.t(), dzb);
          dbp.add_(dzb.sum(0));
        }
      }
    });
  });
  return {dxh, dcp, dw.sum(0), db.sum(0)};
}

// ELU(x·Wᵀ + b), the RNNprop preprocessing layer, in one pass (ATen's ELU is not vectorised).
torch::Tensor linear_elu(torch::Tensor x, torch::Tensor weight, torch::Tensor bias) {
  const int64_t n = x.size(0), k_in = x.size(1), H = weight.size(0);
  const auto xc = x.contiguous(), wt = weight.t().contiguous(), bc = bias.contiguous();
  auto y = at::empty({n, H}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "linear_elu", [&] {
    at::parallel_for(0, n, kBlock, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; r += kBlock)
        linear_elu_rows(xc.data_ptr<scalar_t>(), wt.data_ptr<scalar_t>(),
                        bc.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), r,
                        std::min(r + kBlock, r1), k_in, H);
    });
  });
  return y;
}
