// The per-step work of rnnnotes.fused's spiking loops (LSNN forward and its BPTT) on the CPU, each step one matmul
// and one pass over the (B, n) neurons instead of some ten tensor operations. Same equations, same order of
// floating-point operations as the Python loops in rnnnotes/fused.py; see there for the mathematics.
#include <torch/extension.h>

namespace {

// A (B, n) slice of a tensor whose last dimension is contiguous: element (i, j) is p[i * row + j]. Scalars are
// rounded to T where the Python loops round them (a float constant times a tensor), so both agree to rounding.
template <typename T>
struct Rows {
  T* p;
  int64_t row;
  Rows(const at::Tensor& x) : p(x.data_ptr<T>()), row(x.stride(0)) { TORCH_CHECK(x.stride(1) == 1 || x.size(1) == 1); }
  T* operator[](int64_t i) const { return p + i * row; }
};

// torch.lerp(start, end, w) with a scalar weight, as ATen computes it (SMALL: |w| < 0.5).
template <typename T, bool SMALL>
inline T lerp(T start, T end, T w) {
  return SMALL ? start + w * (end - start) : end - (end - start) * (T(1) - w);
}

// Restricted pointers must be function parameters for the compiler to vectorize the loops over neurons.
#define R __restrict

// One forward step of one row of the batch: threshold, membrane, spike (see fused._spiking_forward).
template <typename T, bool ADAPTIVE, bool POSITIVE, bool REFRACTORY, bool SMALL_RHO, bool SMALL_ALPHA>
void forward_row(int64_t n, const T* R vp, const T* R zp, const T* R dp, T* R vo, T* R ao, T* R zo, T* R bp,
                 T* R lp, uint8_t* R okp, const T* R beta, T thr, T rho, T alpha, T minus_dt, T spike, T latest,
                 T now) {
  for (int64_t j = 0; j < n; ++j) {
    T a = thr;
    if constexpr (ADAPTIVE) {
      const T b_j = lerp<T, SMALL_RHO>(zp[j], bp[j], rho);
      bp[j] = b_j;
      a = thr + b_j * beta[j];
      ao[j] = a;
    }
    vo[j] = lerp<T, SMALL_ALPHA>(dp[j], vp[j], alpha) + minus_dt * zp[j] * a;
    const bool above = POSITIVE ? vp[j] > a : (vp[j] - a) / a > T(0);
    if constexpr (REFRACTORY) {  // arithmetic on 0/1, which the compiler vectorizes (not a conditional store)
      const T may = lp[j] <= latest ? T(1) : T(0), fires = above ? may : T(0);
      okp[j] = static_cast<uint8_t>(may);
      lp[j] += fires * (now - lp[j]);  // the step where it fires, exactly: lp holds whole numbers
      zo[j] = fires * spike;
    } else {
      zo[j] = above ? spike : T(0);
    }
  }
}

// One backward step of one row: the pseudo-derivative P = dz_t / dv_{t-1} and R = -dz_t / dA_t (as
// fused._sensitivities), then the adjoints of v, z, b (as fused._spiking_backward).
template <typename T, bool ADAPTIVE, bool REFRACTORY, bool HAS_Z, bool HAS_V, bool HAS_A>
void backward_row(int64_t n, T* R g, T* R dzp, T* R dbp, T* R o, const T* R zp, const T* R vp, const T* R ap,
                  const uint8_t* R okp, const T* R gzp, const T* R gvp, const T* R gap, const T* R beta, T alpha, T rho,
                  T dt, T minus_dt, T keep, T lif, T slope) {
  for (int64_t j = 0; j < n; ++j) {
    const T u = (vp[j] - ap[j]) / ap[j];
    T p = std::max(T(1) - std::abs(u), T(0)) * slope / ap[j];
    if constexpr (REFRACTORY) p = p * T(okp[j]);
    T g_j = g[j];
    if constexpr (HAS_V) {
      g_j = g_j + gvp[j];
      g[j] = g_j;
    }
    const T gz = HAS_Z ? dzp[j] + gzp[j] : dzp[j];
    if constexpr (ADAPTIVE) {
      const T minus_d_a = gz * ((u + T(1)) * p) + dt * g_j * zp[j];
      T d_b = dbp[j];
      if constexpr (HAS_A) d_b = d_b + gap[j] * beta[j];
      d_b = d_b + T(-1) * minus_d_a * beta[j];
      dzp[j] = d_b * keep + minus_dt * g_j * ap[j];
      dbp[j] = d_b * rho;
    } else {
      dzp[j] = g_j * lif;
    }
    o[j] = gz * p + alpha * g_j;
  }
}

#undef R

// Rows per task of at::parallel_for: about 4096 neurons.
inline int64_t grain(int64_t n) { return std::max<int64_t>(1, 4096 / std::max<int64_t>(n, 1)); }

template <typename T, bool ADAPTIVE, bool POSITIVE, bool REFRACTORY, bool SMALL_RHO, bool SMALL_ALPHA>
void forward_steps(const at::Tensor& current, const at::Tensor& weights, const at::Tensor& v0, const at::Tensor& z0,
                   const at::Tensor& b0, const at::Tensor& last_spike, const at::Tensor& beta, const at::Tensor& V,
                   const at::Tensor& A, const at::Tensor& Z, const at::Tensor& history, const at::Tensor& allowed,
                   T alpha, T rho, T thr, T dt, int64_t n_ref, int64_t n_delay) {
  const int64_t T_ = current.size(0), B = current.size(1), n = current.size(2);
  const T minus_dt = -dt, spike = T(1) / dt;
  at::Tensor drive = at::empty({B, n}, current.options());
  at::Tensor b = b0.contiguous().clone();
  const T* beta_p = beta.data_ptr<T>();
  T* last = last_spike.data_ptr<T>();
  T* b_p = b.data_ptr<T>();
  for (int64_t t = 0; t < T_; ++t) {
    const at::Tensor z_prev = t ? Z.select(0, t - 1) : z0;
    if (n_delay == 1) {
      at::addmm_out(drive, current.select(0, t), z_prev, weights);
    } else {
      at::addmm_out(drive, current.select(0, t), history.narrow(1, t, n_delay).reshape({B, n_delay * n}), weights);
    }
    const Rows<T> v_in(t ? V.select(0, t - 1) : v0), z_in(z_prev), d(drive), v_out(V.select(0, t)),
        a_out(A.select(0, t)), z_out(Z.select(0, t));
    uint8_t* ok = REFRACTORY ? reinterpret_cast<uint8_t*>(allowed.select(0, t).data_ptr<bool>()) : nullptr;
    const T latest = T(t - 1 - n_ref), now = T(t);
    at::parallel_for(0, B, grain(n), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        forward_row<T, ADAPTIVE, POSITIVE, REFRACTORY, SMALL_RHO, SMALL_ALPHA>(
            n, v_in[i], z_in[i], d[i], v_out[i], a_out[i], z_out[i], b_p + i * n, last + i * n,
            REFRACTORY ? ok + i * n : nullptr, beta_p, thr, rho, alpha, minus_dt, spike, latest, now);
      }
    });
  }
}

template <typename T, bool ADAPTIVE, bool REFRACTORY, bool HAS_Z, bool HAS_V, bool HAS_A>
void backward_steps(const at::Tensor& V, const at::Tensor& A, const at::Tensor& Z, const at::Tensor& allowed,
                    const at::Tensor& v0, const at::Tensor& z0, const at::Tensor& G, const at::Tensor& later,
                    const at::Tensor& w_back, const at::Tensor& grad_z, const at::Tensor& grad_v,
                    const at::Tensor& grad_a, const at::Tensor& beta, const at::Tensor& dv0, const at::Tensor& dz,
                    const at::Tensor& db, T alpha, T rho, T dt, T keep, T lif, T slope, int64_t n_delay,
                    bool cut) {
  const int64_t T_ = Z.size(0), B = Z.size(1), n = Z.size(2);
  const T minus_dt = -dt;
  const T* beta_p = beta.data_ptr<T>();
  const Rows<T> dz_r(dz), db_r(db);
  for (int64_t t = T_ - 1; t >= 0; --t) {
    const at::Tensor g_v = G.select(0, t);
    const Rows<T> gv(g_v), z_in(t ? Z.select(0, t - 1) : z0), v_in(t ? V.select(0, t - 1) : v0),
        out(t ? G.select(0, t - 1) : dv0), gz_in(HAS_Z ? grad_z.select(0, t) : dz),
        gv_in(HAS_V ? grad_v.select(0, t) : dz), ga_in(HAS_A ? grad_a.select(0, t) : dz), a(A.select(0, t));
    const uint8_t* ok = REFRACTORY ? reinterpret_cast<const uint8_t*>(allowed.select(0, t).data_ptr<bool>()) : nullptr;
    at::parallel_for(0, B, grain(n), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        backward_row<T, ADAPTIVE, REFRACTORY, HAS_Z, HAS_V, HAS_A>(
            n, gv[i], dz_r[i], db_r[i], out[i], z_in[i], v_in[i], a[i], REFRACTORY ? ok + i * n : nullptr,
            HAS_Z ? gz_in[i] : nullptr, HAS_V ? gv_in[i] : nullptr, HAS_A ? ga_in[i] : nullptr, beta_p, alpha, rho, dt,
            minus_dt, keep, lif, slope);
      }
    });
    if (!cut) {
      if (n_delay == 1) {
        dz.addmm_(g_v, w_back);
      } else {
        dz.addmm_(later.narrow(1, t, n_delay).reshape({B, n_delay * n}), w_back);
      }
    }
  }
}

// Calls f.template operator()<flags...>() with the run-time flags as compile-time constants.
template <typename F, bool... Fixed>
void with_flags(F&& f) {
  f.template operator()<Fixed...>();
}
template <typename F, bool... Fixed, typename... Rest>
void with_flags(F&& f, bool first, Rest... rest) {
  if (first) {
    with_flags<F, Fixed..., true>(std::forward<F>(f), rest...);
  } else {
    with_flags<F, Fixed..., false>(std::forward<F>(f), rest...);
  }
}

}  // namespace

void forward(at::Tensor current, at::Tensor weights, at::Tensor v0, at::Tensor z0, at::Tensor b0,
             at::Tensor last_spike, at::Tensor beta, at::Tensor V, at::Tensor A, at::Tensor Z,
             c10::optional<at::Tensor> history, c10::optional<at::Tensor> allowed, double alpha, double rho,
             double thr, double dt, int64_t n_ref, int64_t n_delay, bool adaptive, bool positive) {
  at::NoGradGuard no_grad;
  AT_DISPATCH_FLOATING_TYPES(current.scalar_type(), "spiking_forward", [&] {
    using T = scalar_t;
    const T alpha_t = alpha, rho_t = rho;  // lerp's branch is taken on the weight in the tensor's type
    with_flags([&]<bool ADAPTIVE, bool POSITIVE, bool REFRACTORY, bool SMALL_RHO, bool SMALL_ALPHA>() {
      forward_steps<T, ADAPTIVE, POSITIVE, REFRACTORY, SMALL_RHO, SMALL_ALPHA>(
          current, weights, v0, z0, b0, last_spike, beta, V, A, Z, history.value_or(at::Tensor()),
          allowed.value_or(at::Tensor()), alpha_t, rho_t, T(thr), T(dt), n_ref, n_delay);
    }, adaptive, positive, n_ref > 0, std::abs(rho_t) < T(0.5), std::abs(alpha_t) < T(0.5));
  });
}

void backward(at::Tensor V, at::Tensor A, at::Tensor Z, c10::optional<at::Tensor> allowed, at::Tensor v0,
              at::Tensor z0, at::Tensor G, c10::optional<at::Tensor> later, at::Tensor w_back,
              c10::optional<at::Tensor> grad_z, c10::optional<at::Tensor> grad_v, c10::optional<at::Tensor> grad_a,
              at::Tensor beta, at::Tensor dv0, at::Tensor dz, at::Tensor db, double alpha, double rho, double thr,
              double dt, double gamma, int64_t n_delay, bool adaptive, bool cut) {
  at::NoGradGuard no_grad;
  AT_DISPATCH_FLOATING_TYPES(Z.scalar_type(), "spiking_backward", [&] {
    using T = scalar_t;
    with_flags([&]<bool ADAPTIVE, bool REFRACTORY, bool HAS_Z, bool HAS_V, bool HAS_A>() {
      backward_steps<T, ADAPTIVE, REFRACTORY, HAS_Z, HAS_V, HAS_A>(
          V, A, Z, allowed.value_or(at::Tensor()), v0, z0, G, later.value_or(at::Tensor()), w_back,
          grad_z.value_or(at::Tensor()), grad_v.value_or(at::Tensor()), grad_a.value_or(at::Tensor()), beta, dv0, dz,
          db, T(alpha), T(rho), T(dt), T(1.0 - rho), T(-thr * dt), T(gamma / dt), n_delay, cut);  // as Python does
    }, adaptive, allowed.has_value(), grad_z.has_value(), grad_v.has_value(), grad_a.has_value());
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward);
  m.def("backward", &backward);
}
