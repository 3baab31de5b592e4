/**
 * The FFT in float64 on the host, and S4's convolution mode computed with it: a plain iterative radix-2
 * FFT (bit-reversal permutation, then butterflies) and the causal linear convolution of u (B, D, L) with a
 * per-channel kernel K (D, Lk) by zero-padding both to n = the power of two >= L + Lk - 1 (so the circular
 * convolution of length n equals the linear one on t < L), multiplying the spectra and transforming back.
 * These are the oracles of the WebGPU FFT path (`fft_wgsl.ts`) and the cpu backend's `method: "fft"`.
 * @module
 */

/** The smallest power of two >= x (1 for x <= 1). */
export function nextPow2(x: number): number {
  let n = 1;
  while (n < x) n *= 2;
  return n;
}

const tables = new Map<number, [Float64Array, Float64Array]>();

/** cos and sin of 2 pi k / n for k < n / 2, each from its own angle (no recurrence), kept per n. */
function twiddles(n: number): [Float64Array, Float64Array] {
  let t = tables.get(n);
  if (!t) {
    const h = Math.max(1, n / 2);
    t = [new Float64Array(h), new Float64Array(h)];
    for (let k = 0; k < h; k++) {
      t[0][k] = Math.cos((2 * Math.PI * k) / n);
      t[1][k] = Math.sin((2 * Math.PI * k) / n);
    }
    tables.set(n, t);
  }
  return t;
}

/**
 * The discrete Fourier transform in place: X[k] = sum_t x[t] e^(-2 pi i k t / n) (forward) or
 * x[t] = (1/n) sum_k X[k] e^(+2 pi i k t / n) (`inverse`), for complex data as separate real and
 * imaginary arrays whose length n is a power of two. Radix-2, decimation in time, float64.
 *
 * @example
 * ```ts
 * import { fftRef } from "seqlab";
 * const re = new Float64Array([1, 2, 3, 4]), im = new Float64Array(4);
 * const round = (a: Float64Array) => Array.from(a, (v) => +v.toFixed(12));
 * fftRef(re, im);
 * console.log(round(re), round(im)); // [10, -2, -2, -2] [0, 2, 0, -2]
 * fftRef(re, im, true);
 * console.log(round(re)); // [1, 2, 3, 4]
 * ```
 */
export function fftRef(re: Float64Array, im: Float64Array, inverse = false): void {
  const n = re.length;
  if (im.length !== n) throw new Error(`fftRef: re and im differ in length: ${n} and ${im.length}`);
  if (n === 0 || nextPow2(n) !== n) throw new Error(`fftRef: the length must be a power of two, got ${n}`);
  for (let i = 1, j = 0; i < n; i++) {
    let bit = n >> 1;
    for (; j & bit; bit >>= 1) j ^= bit;
    j ^= bit;
    if (i < j) {
      const r = re[i], m = im[i];
      re[i] = re[j];
      im[i] = im[j];
      re[j] = r;
      im[j] = m;
    }
  }
  const [cos, sin] = twiddles(n);
  const sign = inverse ? 1 : -1;
  for (let len = 2; len <= n; len *= 2) {
    const half = len / 2, step = n / len;
    for (let k = 0; k < half; k++) {
      const wr = cos[k * step], wi = sign * sin[k * step];
      for (let s = 0; s < n; s += len) {
        const p = s + k, q = p + half;
        const xr = re[q] * wr - im[q] * wi, xi = re[q] * wi + im[q] * wr;
        re[q] = re[p] - xr;
        im[q] = im[p] - xi;
        re[p] += xr;
        im[p] += xi;
      }
    }
  }
  if (inverse) {
    for (let i = 0; i < n; i++) {
      re[i] /= n;
      im[i] /= n;
    }
  }
}

/** The spectrum of a real row x[off .. off + len) zero-padded to n. */
function spectrum(x: ArrayLike<number>, off: number, len: number, n: number): [Float64Array, Float64Array] {
  const re = new Float64Array(n), im = new Float64Array(n);
  for (let t = 0; t < len; t++) re[t] = x[off + t];
  fftRef(re, im);
  return [re, im];
}

function checkConv(
  op: string,
  u: ArrayLike<number>,
  shape: readonly number[],
  K: ArrayLike<number>,
  Lk: number,
) {
  const [Bn, D, L] = shape;
  if (shape.length !== 3 || u.length !== Bn * D * L) {
    throw new Error(
      `${op}: u must be (B, D, L) with B D L values, got shape [${shape}] and ${u.length} values`,
    );
  }
  if (!Number.isInteger(Lk) || Lk < 1 || Lk > L || K.length !== D * Lk) {
    throw new Error(
      `${op}: K must be (D, Lk) with 1 <= Lk <= L = ${L} and D = ${D}, got Lk ${Lk}, ${K.length} values`,
    );
  }
  return { Bn, D, L, n: nextPow2(L + Lk - 1) };
}

/**
 * Causal convolution by FFT: y[b, d, t] = sum_{s <= t} K[d, t - s] u[b, d, s] for u (B, D, L) and
 * K (D, Lk), Lk <= L, row-major; both zero-padded to n = nextPow2(L + Lk - 1). Returns y (B, D, L).
 *
 * @example
 * ```ts
 * import { fftConvRef } from "seqlab";
 * const y = fftConvRef([1, 0, 0, 2], [1, 1, 4], [1, 0.5, 0.25], 3);
 * console.log(Array.from(y).map((v) => +v.toFixed(12))); // [1, 0.5, 0.25, 2]
 * ```
 */
export function fftConvRef(
  u: ArrayLike<number>,
  shape: readonly number[],
  K: ArrayLike<number>,
  Lk: number,
): Float64Array {
  const { Bn, D, L, n } = checkConv("fftConvRef", u, shape, K, Lk);
  const y = new Float64Array(Bn * D * L);
  for (let d = 0; d < D; d++) {
    const [kr, ki] = spectrum(K, d * Lk, Lk, n);
    for (let b = 0; b < Bn; b++) {
      const row = (b * D + d) * L;
      const [re, im] = spectrum(u, row, L, n);
      for (let k = 0; k < n; k++) {
        [re[k], im[k]] = [re[k] * kr[k] - im[k] * ki[k], re[k] * ki[k] + im[k] * kr[k]];
      }
      fftRef(re, im, true);
      y.set(re.subarray(0, L), row);
    }
  }
  return y;
}

/**
 * Gradients of {@link fftConvRef} for an output gradient g (B, D, L), by FFT: du[b, d, s] =
 * sum_{t >= s} g[b, d, t] K[d, t - s] (the spectrum conj(K^) g^) and dK[d, j] = sum_b sum_t g[b, d, t]
 * u[b, d, t - j] (sum_b conj(u^) g^), both correlations, exact on the kept lags because n >= L + Lk - 1.
 * Returns du (B, D, L) and dK (D, Lk).
 *
 * @example
 * ```ts
 * import { fftConvBackwardRef } from "seqlab";
 * const { du, dK } = fftConvBackwardRef([0, 0, 1], [1, 2, 3], [1, 1, 3], [1, 10], 2);
 * console.log(Array.from(du).map((v) => +v.toFixed(12)), Array.from(dK).map((v) => +v.toFixed(12))); // [0, 10, 1] [3, 2]
 * ```
 */
export function fftConvBackwardRef(
  g: ArrayLike<number>,
  u: ArrayLike<number>,
  shape: readonly number[],
  K: ArrayLike<number>,
  Lk: number,
): { du: Float64Array; dK: Float64Array } {
  const { Bn, D, L, n } = checkConv("fftConvBackwardRef", u, shape, K, Lk);
  if (g.length !== u.length) throw new Error(`fftConvBackwardRef: g has ${g.length} values, u ${u.length}`);
  const du = new Float64Array(Bn * D * L), dK = new Float64Array(D * Lk);
  for (let d = 0; d < D; d++) {
    const [kr, ki] = spectrum(K, d * Lk, Lk, n);
    const accr = new Float64Array(n), acci = new Float64Array(n);
    for (let b = 0; b < Bn; b++) {
      const row = (b * D + d) * L;
      const [gr, gi] = spectrum(g, row, L, n), [ur, ui] = spectrum(u, row, L, n);
      const re = new Float64Array(n), im = new Float64Array(n);
      for (let k = 0; k < n; k++) {
        re[k] = kr[k] * gr[k] + ki[k] * gi[k]; // conj(K^) g^
        im[k] = kr[k] * gi[k] - ki[k] * gr[k];
        accr[k] += ur[k] * gr[k] + ui[k] * gi[k]; // conj(u^) g^
        acci[k] += ur[k] * gi[k] - ui[k] * gr[k];
      }
      fftRef(re, im, true);
      du.set(re.subarray(0, L), row);
    }
    fftRef(accr, acci, true);
    dK.set(accr.subarray(0, Lk), d * Lk);
  }
  return { du, dK };
}
