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

int64_t grain(int64_t H) { return std::max<int64_t>(kRows, 16384 / (4 * H)); }

}  // namespace

// h_out, c_out: [n, H], written.
void lstm_forward(torch::Tensor z, torch::Tensor c, torch::Tensor h_out, torch::Tensor c_out) {
  const int64_t n = c.size(0), H = c.size(1);
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "lstm_forward", [&] {
    const auto *zp = z.data_ptr<scalar_t>(), *cp = c.data_ptr<scalar_t>();
    auto *hp = h_out.data_ptr<scalar_t>(), *cnp = c_out.data_ptr<scalar_t>();
    at::parallel_for(0, n, grain(H), [&](int64_t r0, int64_t r1) {
      forward_rows(zp, cp, hp, cnp, r0, r1, H);
    });
  });
}

// dz_out: [n, 4H], dc_out: [n, H], written.
void lstm_backward(torch::Tensor z, torch::Tensor c, torch::Tensor dh, torch::Tensor dc,
                   torch::Tensor dz_out, torch::Tensor dc_out) {
  const int64_t n = c.size(0), H = c.size(1);
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "lstm_backward", [&] {
    const auto *zp = z.data_ptr<scalar_t>(), *cp = c.data_ptr<scalar_t>();
    const auto *dhp = dh.data_ptr<scalar_t>(), *dcp = dc.data_ptr<scalar_t>();
    auto *dzp = dz_out.data_ptr<scalar_t>(), *dcpp = dc_out.data_ptr<scalar_t>();
    at::parallel_for(0, n, grain(H), [&](int64_t r0, int64_t r1) {
      backward_rows(zp, cp, dhp, dcp, dzp, dcpp, r0, r1, H);
    });
  });
}
