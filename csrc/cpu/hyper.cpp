// The hypernetwork's forward on rows of z (hyper.h).
#include "hyper.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu_util.h"

namespace shc_cpu {

template <typename T>
void hyper_rows(const T* z, int64_t nb, int64_t D2, int64_t hid, int64_t taps, const T* fc1, const T* fc1t,
                const T* b1, const T* fc2t, const T* b2, bool brgemm, T* h, T* m) {
  const auto linear = [&](const T* in, int64_t K, int64_t n, const T* wt, const T* b, T* out) {
    if (b != nullptr)
      for (int64_t s = 0; s < nb; ++s) std::copy(b, b + n, out + s * n);
    mm<T>(nb, n, K, in, K, wt, n, out, n, b != nullptr, brgemm);
  };
  if (fc1t != nullptr) {
    linear(z, D2, hid, fc1t, b1, h);
    for (int64_t i = 0; i < nb * hid; ++i) h[i] = std::max(h[i], T(0));
  } else {  // h^T (hid x nb) = fc1 (hid x D2) z^T: fc1 read in place, only z and h^T transposed
    std::vector<T> zt(static_cast<size_t>(D2 * nb)), ht(static_cast<size_t>(hid * nb));
    transpose<T>(nb, D2, z, D2, zt.data(), nb);
    mm<T>(hid, nb, D2, fc1, D2, zt.data(), nb, ht.data(), nb, false, brgemm);
    for (int64_t s = 0; s < nb; ++s)
      for (int64_t k = 0; k < hid; ++k)
        h[s * hid + k] = std::max(ht[k * nb + s] + (b1 != nullptr ? b1[k] : T(0)), T(0));
  }
  linear(h, hid, taps, fc2t, b2, m);
  for (int64_t i = 0; i < nb * taps; ++i) m[i] = T(1) / (T(1) + std::exp(-m[i]));
}

template void hyper_rows<float>(const float*, int64_t, int64_t, int64_t, int64_t, const float*, const float*,
                                const float*, const float*, const float*, bool, float*, float*);
template void hyper_rows<double>(const double*, int64_t, int64_t, int64_t, int64_t, const double*, const double*,
                                 const double*, const double*, const double*, bool, double*, double*);

}  // namespace shc_cpu
