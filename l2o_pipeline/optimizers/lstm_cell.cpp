// The TF LSTM cell's pointwise part as two fused loops (see native.py for why and how it is
// built). z holds one layer's gate pre-activations [n, 4H] (blocks i, j, f, o; the forget
// bias added, the j block scaled by 2, so tanh(g) = 2 sigmoid(2g) - 1). Rows are processed in
// blocks whose gates stay in L1/L2; the exponentials run over contiguous buffers so that the
// compiler vectorises them (-ffast-math: libmvec's exp).
#include <torch/extension.h>

#include <ATen/Parallel.h>
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

// Rows per cache block of the whole layer: its gates, 256 x 4H x 4 bytes = 80 KB for H = 20,
// stay in L2 between the gate GEMM, the pointwise pass and the backward GEMMs.
constexpr int64_t kBlock = 256;

}  // namespace

// One layer forward: h', c' = cell([x h]·w + b, c), w = W·scale and b as kernels._gate_params.
void lstm_forward(torch::Tensor x, torch::Tensor h, torch::Tensor c, torch::Tensor w,
                  torch::Tensor b, torch::Tensor h_out, torch::Tensor c_out) {
  const int64_t n = c.size(0), H = c.size(1), n_in = x.size(1);
  const auto wx = w.narrow(0, 0, n_in), wh = w.narrow(0, n_in, H);
  AT_DISPATCH_FLOATING_TYPES(c.scalar_type(), "lstm_forward", [&] {
    at::parallel_for(0, n, kBlock, [&](int64_t r0, int64_t r1) {
      // Grad mode is thread-local: worker threads start with it on, and these ops' out=
      // forms refuse inputs that require grad (autograd is the caller's Function).
      at::NoGradGuard no_grad;
      auto z = at::empty({kBlock, 4 * H}, c.options());
      for (int64_t r = r0; r < r1; r += kBlock) {
        const int64_t rows = std::min(kBlock, r1 - r);
        auto zb = z.narrow(0, 0, rows);
        at::addmm_out(zb, b, x.narrow(0, r, rows), wx);
        zb.addmm_(h.narrow(0, r, rows), wh);
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
  const auto wx = w.narrow(0, 0, n_in), wh = w.narrow(0, n_in, H);
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
          at::addmm_out(zb, b, xb, wx);
          zb.addmm_(hb, wh);
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
