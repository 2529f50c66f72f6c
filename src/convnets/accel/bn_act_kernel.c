/* BatchNorm (batch or running statistics) fused with a clamp activation, and for ResNet blocks with the
 * shortcut add before the clamp, for bf16 channels-last tensors on CPU.
 *
 * Compiled on first use by ckernels.py (cc -O3 -march=native -fopenmp); fused_bn_act.py calls it.
 * A tensor is `rows` x `C` bf16 values (N*H*W rows of C channels, channels-last); per-channel vectors
 * are float32. The activation is clamp(z, lo, hi): ReLU6 is (0, 6), ReLU (0, inf), none (-inf, inf).
 *
 * Why by hand: ATen runs BatchNorm and the activation as separate memory passes (forward: statistics,
 * normalise, clamp; backward: the activation's mask, BatchNorm's sums, its input gradient), and
 * inductor's generated kernels for the same graph were slower still (train/fused_bn_act.py). Here the
 * forward is two passes (statistics; normalise+clamp) and the backward two (sums; input gradient),
 * the mask recomputed from the saved BatchNorm input instead of stored.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline float bf16_to_f32(uint16_t b) {
  uint32_t u = (uint32_t)b << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static inline uint16_t f32_to_bf16(float f) { /* round to nearest even, as torch's .to(bfloat16) */
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* NaN stays NaN */
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

/* Rows per float partial sum: short enough for float accumulation, summed into doubles after. */
#define MAX_CHUNK 512

static int64_t chunk_rows(int64_t rows, int nthreads) {
  int64_t chunk = (rows + nthreads - 1) / nthreads; /* every thread gets rows, even for few rows */
  if (chunk > MAX_CHUNK) chunk = MAX_CHUNK;
  return chunk < 1 ? 1 : chunk;
}

/* The two per-channel sums a pass needs. SUMS_STATS: v = x - shift, then v and v * v.
 * SUMS_GRAD: dz = g where lo < x * scale + shift < hi (else 0, as ATen's hardtanh/threshold backward:
 * none at the bounds), then dz and dz * (x - mean). SUMS_GRAD_FROM_OUTPUT: the same with the mask
 * read off the clamped output y (lo < y < hi), for the residual form where the clamp's input also
 * holds the shortcut. total1, total2 (zeroed, C doubles each) get the sums over all rows: float
 * partial sums per chunk of rows, added up in double. Returns 0, or -1 when out of memory. (Plain
 * pointer arguments, not a struct: the compiler then vectorises.) */
enum { SUMS_STATS, SUMS_GRAD, SUMS_GRAD_FROM_OUTPUT };

static int channel_sums(int kind, const uint16_t* restrict x, const uint16_t* restrict g,
                        const uint16_t* restrict y, const float* restrict shift, const float* restrict scale,
                        const float* restrict mean, float lo, float hi, int64_t rows, int64_t C,
                        double* total1, double* total2, int nthreads) {
  int failed = 0;
  const int64_t chunk = chunk_rows(rows, nthreads);
#pragma omp parallel num_threads(nthreads)
  {
    float* restrict s1 = malloc(C * sizeof(float));
    float* restrict s2 = malloc(C * sizeof(float));
    double* d1 = calloc(C, sizeof(double));
    double* d2 = calloc(C, sizeof(double));
    const int ok = s1 && s2 && d1 && d2;
#pragma omp for schedule(static)
    for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
      if (!ok) continue;
      const int64_t r1 = r0 + chunk < rows ? r0 + chunk : rows;
      for (int64_t c = 0; c < C; c++) s1[c] = s2[c] = 0.f;
      for (int64_t r = r0; r < r1; r++) {
        const uint16_t* restrict xr = x + r * C;
        if (kind == SUMS_STATS) {
#pragma omp simd
          for (int64_t c = 0; c < C; c++) {
            const float v = bf16_to_f32(xr[c]) - shift[c];
            s1[c] += v;
            s2[c] += v * v;
          }
        } else if (kind == SUMS_GRAD) {
          const uint16_t* restrict gr = g + r * C;
#pragma omp simd
          for (int64_t c = 0; c < C; c++) {
            const float xv = bf16_to_f32(xr[c]);
            const float z = xv * scale[c] + shift[c];
            const float dz = (z > lo && z < hi) ? bf16_to_f32(gr[c]) : 0.f;
            s1[c] += dz;
            s2[c] += dz * (xv - mean[c]);
          }
        } else {
          const uint16_t* restrict gr = g + r * C;
          const uint16_t* restrict yr = y + r * C;
#pragma omp simd
          for (int64_t c = 0; c < C; c++) {
            const float yv = bf16_to_f32(yr[c]);
            const float dz = (yv > lo && yv < hi) ? bf16_to_f32(gr[c]) : 0.f;
            s1[c] += dz;
            s2[c] += dz * (bf16_to_f32(xr[c]) - mean[c]);
          }
        }
      }
      for (int64_t c = 0; c < C; c++) {
        d1[c] += s1[c];
        d2[c] += s2[c];
      }
    }
#pragma omp critical
    {
      if (ok) {
        for (int64_t c = 0; c < C; c++) {
          total1[c] += d1[c];
          total2[c] += d2[c];
        }
      } else {
        failed = 1;
      }
    }
    free(s1), free(s2), free(d1), free(d2);
  }
  return failed ? -1 : 0;
}

/* Per-channel mean and biased variance; sums are shifted by the first row (stable when the mean is
 * large against the spread). Returns 0, or -1 when out of memory. */
int bn_act_stats(const uint16_t* x, int64_t rows, int64_t C, float* mean, float* var, int nthreads) {
  double* total1 = calloc(C, sizeof(double));
  double* total2 = calloc(C, sizeof(double));
  float* shift = malloc(C * sizeof(float));
  int failed = !total1 || !total2 || !shift;
  if (!failed) {
    for (int64_t c = 0; c < C; c++) shift[c] = bf16_to_f32(x[c]);
    failed = channel_sums(SUMS_STATS, x, NULL, NULL, shift, NULL, NULL, 0.f, 0.f, rows, C, total1, total2,
                          nthreads);
  }
  if (!failed) {
    for (int64_t c = 0; c < C; c++) {
      const double m = total1[c] / rows;
      const double v = total2[c] / rows - m * m;
      mean[c] = (float)(m + shift[c]);
      var[c] = (float)(v > 0 ? v : 0);
    }
  }
  free(total1), free(total2), free(shift);
  return failed ? -1 : 0;
}

/* y = clamp(x * scale + shift, lo, hi), where scale = weight * invstd and shift = bias - mean * scale. */
void bn_act_apply(const uint16_t* restrict x, int64_t rows, int64_t C, const float* restrict scale,
                  const float* restrict shift, float lo, float hi, uint16_t* restrict y, int nthreads) {
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t r = 0; r < rows; r++) {
    const uint16_t* restrict xr = x + r * C;
    uint16_t* restrict yr = y + r * C;
#pragma omp simd
    for (int64_t c = 0; c < C; c++) {
      float z = bf16_to_f32(xr[c]) * scale[c] + shift[c];
      z = z < lo ? lo : (z > hi ? hi : z);
      yr[c] = f32_to_bf16(z);
    }
  }
}

/* The first backward pass: sum_dz and sum_dzx per channel (channel_sums of `kind`), and the second
 * pass's coefficients a = sum_dz / n and k = invstd^2 * sum_dzx / n (both 0 for running statistics,
 * which are constants). Returns 0, or -1 when out of memory. */
static int backward_sums(int kind, const uint16_t* x, const uint16_t* g, const uint16_t* y, const float* shift,
                         const float* scale, const float* mean, const float* invstd, float lo, float hi,
                         int batch_stats, int64_t rows, int64_t C, float* sum_dz, float* sum_dzx, float* a,
                         float* k, int nthreads) {
  double* total1 = calloc(C, sizeof(double));
  double* total2 = calloc(C, sizeof(double));
  int failed = !total1 || !total2;
  if (!failed) {
    failed = channel_sums(kind, x, g, y, shift, scale, mean, lo, hi, rows, C, total1, total2, nthreads);
  }
  if (!failed) {
    for (int64_t c = 0; c < C; c++) {
      sum_dz[c] = (float)total1[c];
      sum_dzx[c] = (float)total2[c];
      a[c] = batch_stats ? (float)(total1[c] / rows) : 0.f;
      k[c] = batch_stats ? (float)(total2[c] / rows * invstd[c] * invstd[c]) : 0.f;
    }
  }
  free(total1), free(total2);
  return failed ? -1 : 0;
}

/* Backward: sum_dz (the bias gradient) and sum_dzx = sum(dz * (x - mean)) per channel, then
 * dx = scale * (dz - sum_dz / n - (x - mean) * invstd^2 * sum_dzx / n) where the forward used the
 * batch's statistics (batch_stats), else (running statistics: constants) dx = scale * dz. Returns 0,
 * or -1 when out of memory. */
int bn_act_backward(const uint16_t* restrict g, const uint16_t* restrict x, int64_t rows, int64_t C,
                    const float* restrict scale, const float* restrict shift, const float* restrict mean,
                    const float* restrict invstd, float lo, float hi, int batch_stats, uint16_t* restrict dx,
                    float* sum_dz, float* sum_dzx, int nthreads) {
  float* restrict a = malloc(C * sizeof(float));
  float* restrict k = malloc(C * sizeof(float));
  const int failed = !a || !k ||
                     backward_sums(SUMS_GRAD, x, g, NULL, shift, scale, mean, invstd, lo, hi, batch_stats, rows,
                                   C, sum_dz, sum_dzx, a, k, nthreads) != 0;
  if (!failed) {
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
      const uint16_t* restrict xr = x + r * C;
      const uint16_t* restrict gr = g + r * C;
      uint16_t* restrict dr = dx + r * C;
#pragma omp simd
      for (int64_t c = 0; c < C; c++) {
        const float xv = bf16_to_f32(xr[c]);
        const float z = xv * scale[c] + shift[c];
        const float dz = (z > lo && z < hi) ? bf16_to_f32(gr[c]) : 0.f;
        dr[c] = f32_to_bf16(scale[c] * (dz - a[c] - (xv - mean[c]) * k[c]));
      }
    }
  }
  free(a), free(k);
  return failed ? -1 : 0;
}

/* The residual form, clamp(batch_norm(x) + identity, lo, hi) (ResNet's bn3, shortcut add and ReLU):
 * y = clamp(x * scale + shift + identity, lo, hi). */
void bn_add_act_apply(const uint16_t* restrict x, const uint16_t* restrict identity, int64_t rows, int64_t C,
                      const float* restrict scale, const float* restrict shift, float lo, float hi,
                      uint16_t* restrict y, int nthreads) {
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t r = 0; r < rows; r++) {
    const uint16_t* restrict xr = x + r * C;
    const uint16_t* restrict ir = identity + r * C;
    uint16_t* restrict yr = y + r * C;
#pragma omp simd
    for (int64_t c = 0; c < C; c++) {
      float z = bf16_to_f32(xr[c]) * scale[c] + shift[c] + bf16_to_f32(ir[c]);
      z = z < lo ? lo : (z > hi ? hi : z);
      yr[c] = f32_to_bf16(z);
    }
  }
}

/* Its backward: dz = g where lo < y < hi (the output y; else 0) is the shortcut's gradient
 * d_identity, and BatchNorm's backward of dz as in bn_act_backward gives dx. Returns 0, or -1 when out
 * of memory. */
int bn_add_act_backward(const uint16_t* restrict g, const uint16_t* restrict x, const uint16_t* restrict y,
                        int64_t rows, int64_t C, const float* restrict scale, const float* restrict mean,
                        const float* restrict invstd, float lo, float hi, int batch_stats,
                        uint16_t* restrict dx, uint16_t* restrict d_identity, float* sum_dz, float* sum_dzx,
                        int nthreads) {
  float* restrict a = malloc(C * sizeof(float));
  float* restrict k = malloc(C * sizeof(float));
  const int failed = !a || !k ||
                     backward_sums(SUMS_GRAD_FROM_OUTPUT, x, g, y, NULL, NULL, mean, invstd, lo, hi, batch_stats,
                                   rows, C, sum_dz, sum_dzx, a, k, nthreads) != 0;
  if (!failed) {
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
      const uint16_t* restrict xr = x + r * C;
      const uint16_t* restrict gr = g + r * C;
      const uint16_t* restrict yr = y + r * C;
      uint16_t* restrict dr = dx + r * C;
      uint16_t* restrict ir = d_identity + r * C;
#pragma omp simd
      for (int64_t c = 0; c < C; c++) {
        const float yv = bf16_to_f32(yr[c]);
        const int pass = yv > lo && yv < hi;
        const float dz = pass ? bf16_to_f32(gr[c]) : 0.f;
        ir[c] = pass ? gr[c] : (uint16_t)0;
        dr[c] = f32_to_bf16(scale[c] * (dz - a[c] - (bf16_to_f32(xr[c]) - mean[c]) * k[c]));
      }
    }
  }
  free(a), free(k);
  return failed ? -1 : 0;
}
