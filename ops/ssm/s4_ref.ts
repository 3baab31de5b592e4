/**
 * S4 in float64 on the host: the HiPPO-LegS matrix, the S4D-Lin and S4D-Real initialisations, the
 * discretization of diagonal (real or complex) and dense systems, the SSM convolution kernel
 * K = (C B_bar, C A_bar B_bar, C A_bar^2 B_bar, ...) and the recurrence, as plain loops. These are the
 * oracles of the WebGPU convolution and recurrent modes.
 * @module
 */

import type { DiscretizeMethod } from "./discretize.ts";

/**
 * A diagonal SSM per channel: D channels of N states, float64, row-major (D, N) arrays; complex when the
 * imaginary parts are given (null means 0). `delta` (D) is each channel's step.
 */
export interface DiagSSM {
  /** Channels. */
  D: number;
  /** States per channel. */
  N: number;
  /** Real part of A (D, N). */
  Are: Float64Array;
  /** Imaginary part of A (D, N), or null (real). */
  Aim: Float64Array | null;
  /** Real part of B (D, N). */
  Bre: Float64Array;
  /** Imaginary part of B, or null. */
  Bim: Float64Array | null;
  /** Real part of C (D, N). */
  Cre: Float64Array;
  /** Imaginary part of C, or null. */
  Cim: Float64Array | null;
  /** Step per channel (D). */
  delta: Float64Array;
}

/**
 * HiPPO-LegS (Gu et al.): A[n, k] = -sqrt(2n + 1) sqrt(2k + 1) for n > k, -(n + 1) on the diagonal, 0
 * above; B[n] = sqrt(2n + 1). Row-major (N, N) and (N).
 *
 * @example
 * ```ts
 * import { hippoLegS } from "seqlab";
 * const { A, B } = hippoLegS(3);
 * console.log(Array.from(A).map((v) => +v.toFixed(3))); // [-1, 0, 0, -1.732, -2, 0, -2.236, -3.873, -3]
 * console.log(Array.from(B).map((v) => +v.toFixed(3))); // [1, 1.732, 2.236]
 * ```
 */
export function hippoLegS(N: number): { A: Float64Array; B: Float64Array } {
  if (!Number.isInteger(N) || N < 1) throw new Error(`hippoLegS: N must be a positive integer, got ${N}`);
  const A = new Float64Array(N * N), B = new Float64Array(N);
  for (let n = 0; n < N; n++) {
    B[n] = Math.sqrt(2 * n + 1);
    for (let k = 0; k <= n; k++) {
      A[n * N + k] = n === k ? -(n + 1) : -Math.sqrt(2 * n + 1) * Math.sqrt(2 * k + 1);
    }
  }
  return { A, B };
}

/** Throws when a continuous-time A has a positive real part (the SSM would be unstable). */
export function checkStable(op: string, Are: ArrayLike<number>, N: number, shape: string): void {
  for (let i = 0; i < Are.length; i++) {
    if (Are[i] > 0) {
      throw new Error(
        `${op}: A[${Math.floor(i / N)}, ${i % N}] has real part ${Are[i]} > 0; a stable SSM needs ` +
          `Re(A) <= 0 (A is ${shape})`,
      );
    }
  }
}

/** (e^x - 1) / x for complex x = (re, im), with the series near 0. Returns [re, im]. */
function expm1OverXc(re: number, im: number): [number, number] {
  if (Math.hypot(re, im) < 1e-4) {
    // 1 + x/2 + x^2/6
    return [1 + re / 2 + (re * re - im * im) / 6, im / 2 + (2 * re * im) / 6];
  }
  const e = Math.exp(re);
  const nr = e * Math.cos(im) - 1, ni = e * Math.sin(im);
  const den = re * re + im * im;
  return [(nr * re + ni * im) / den, (ni * re - nr * im) / den];
}

/**
 * Discretizes a diagonal SSM per channel (complex-aware): ZOH A_bar = exp(delta A),
 * B_bar = (exp(delta A) - 1) / (delta A) delta B; bilinear A_bar = (1 + delta A / 2) / (1 - delta A / 2),
 * B_bar = delta B / (1 - delta A / 2); simplified A_bar = exp(delta A), B_bar = delta B. Returns (D, N)
 * real and imaginary parts.
 *
 * @example
 * ```ts
 * import { discretizeDiag } from "seqlab";
 * const one = new Float64Array([1]);
 * const ssm = { D: 1, N: 1, Are: new Float64Array([-1]), Aim: null, Bre: one, Bim: null, Cre: one, Cim: null,
 *   delta: new Float64Array([0.5]) };
 * console.log(discretizeDiag(ssm, "zoh").Abar[0][0].toFixed(4)); // "0.6065"
 * ```
 */
export function discretizeDiag(ssm: DiagSSM, method: DiscretizeMethod = "zoh"): {
  Abar: [Float64Array, Float64Array];
  Bbar: [Float64Array, Float64Array];
} {
  const { D, N } = ssm;
  checkStable("discretizeDiag", ssm.Are, N, `[${D}, ${N}]`);
  const ar = new Float64Array(D * N), ai = new Float64Array(D * N);
  const br = new Float64Array(D * N), bi = new Float64Array(D * N);
  for (let d = 0; d < D; d++) {
    const dt = ssm.delta[d];
    for (let n = 0; n < N; n++) {
      const i = d * N + n;
      const xr = dt * ssm.Are[i], xi = dt * (ssm.Aim ? ssm.Aim[i] : 0);
      const Br = dt * ssm.Bre[i], Bi = dt * (ssm.Bim ? ssm.Bim[i] : 0); // delta B
      if (method === "bilinear") {
        // (1 + x/2) / (1 - x/2) and delta B / (1 - x/2)
        const dr = 1 - xr / 2, di = -xi / 2, den = dr * dr + di * di;
        const nr = 1 + xr / 2, ni = xi / 2;
        ar[i] = (nr * dr + ni * di) / den;
        ai[i] = (ni * dr - nr * di) / den;
        br[i] = (Br * dr + Bi * di) / den;
        bi[i] = (Bi * dr - Br * di) / den;
        continue;
      }
      const e = Math.exp(xr);
      ar[i] = e * Math.cos(xi);
      ai[i] = e * Math.sin(xi);
      if (method === "simplified") {
        br[i] = Br;
        bi[i] = Bi;
      } else {
        const [fr, fi] = expm1OverXc(xr, xi);
        br[i] = fr * Br - fi * Bi;
        bi[i] = fr * Bi + fi * Br;
      }
    }
  }
  return { Abar: [ar, ai], Bbar: [br, bi] };
}

/** Options of the kernel and recurrence: the discretization, and whether states come in conjugate pairs. */
export interface SSMModeOptions {
  /** Discretization (default "zoh"). */
  method?: DiscretizeMethod;
  /**
   * The N complex states stand for N conjugate pairs (S4D's convention): outputs are 2 Re(...) instead of
   * Re(...). Default false.
   */
  conj?: boolean;
}

/**
 * The SSM convolution kernel of a diagonal SSM: K[d, l] = s Re(sum_n C[d, n] A_bar[d, n]^l B_bar[d, n])
 * for l < L, s = 2 with `conj`, else 1. Returns (D, L) row-major.
 *
 * @example
 * ```ts
 * import { ssmKernelRef } from "seqlab";
 * const one = new Float64Array([1]);
 * const ssm = { D: 1, N: 1, Are: new Float64Array([-1]), Aim: null, Bre: one, Bim: null, Cre: one, Cim: null,
 *   delta: new Float64Array([1]) };
 * console.log(Array.from(ssmKernelRef(ssm, 3, { method: "simplified" })).map((v) => +v.toFixed(4))); // [1, 0.3679, 0.1353]
 * ```
 */
export function ssmKernelRef(ssm: DiagSSM, L: number, opts: SSMModeOptions = {}): Float64Array {
  const { D, N } = ssm;
  const { Abar: [ar, ai], Bbar: [br, bi] } = discretizeDiag(ssm, opts.method ?? "zoh");
  const s = opts.conj ? 2 : 1;
  const K = new Float64Array(D * L);
  for (let d = 0; d < D; d++) {
    for (let n = 0; n < N; n++) {
      const i = d * N + n;
      const cr = ssm.Cre[i], ci = ssm.Cim ? ssm.Cim[i] : 0;
      // v = C B_bar A_bar^l, advanced by one complex multiply per l
      let vr = cr * br[i] - ci * bi[i], vi = cr * bi[i] + ci * br[i];
      for (let l = 0; l < L; l++) {
        K[d * L + l] += s * vr;
        [vr, vi] = [vr * ar[i] - vi * ai[i], vr * ai[i] + vi * ar[i]];
      }
    }
  }
  return K;
}

/**
 * The recurrent mode of a diagonal SSM on u (B, D, L) row-major: h_t = A_bar h_t-1 + B_bar u_t from
 * h_-1 = 0, y_t = s Re(C h_t) (+ Dskip u_t). Returns y (B, D, L).
 *
 * @example
 * ```ts
 * import { ssmRecurrenceRef } from "seqlab";
 * const one = new Float64Array([1]);
 * const ssm = { D: 1, N: 1, Are: new Float64Array([-1]), Aim: null, Bre: one, Bim: null, Cre: one, Cim: null,
 *   delta: new Float64Array([1]) };
 * const y = ssmRecurrenceRef(new Float64Array([1, 0, 0]), [1, 1, 3], ssm, { method: "simplified" });
 * console.log(Array.from(y).map((v) => +v.toFixed(4))); // [1, 0.3679, 0.1353]: the impulse response is K
 * ```
 */
export function ssmRecurrenceRef(
  u: ArrayLike<number>,
  [Bn, D, L]: readonly number[],
  ssm: DiagSSM,
  opts: SSMModeOptions & { Dskip?: ArrayLike<number> | null } = {},
): Float64Array {
  const N = ssm.N;
  const { Abar: [ar, ai], Bbar: [br, bi] } = discretizeDiag(ssm, opts.method ?? "zoh");
  const s = opts.conj ? 2 : 1;
  const y = new Float64Array(Bn * D * L);
  const hr = new Float64Array(N), hi = new Float64Array(N);
  for (let b = 0; b < Bn; b++) {
    for (let d = 0; d < D; d++) {
      hr.fill(0);
      hi.fill(0);
      const row = (b * D + d) * L;
      for (let t = 0; t < L; t++) {
        const x = u[row + t];
        let acc = opts.Dskip ? opts.Dskip[d] * x : 0;
        for (let n = 0; n < N; n++) {
          const i = d * N + n;
          const r = ar[i] * hr[n] - ai[i] * hi[n] + br[i] * x;
          hi[n] = ar[i] * hi[n] + ai[i] * hr[n] + bi[i] * x;
          hr[n] = r;
          acc += s * (ssm.Cre[i] * hr[n] - (ssm.Cim ? ssm.Cim[i] * hi[n] : 0));
        }
        y[row + t] = acc;
      }
    }
  }
  return y;
}

/** Solves M X = R for (N, N) M and (N, K) R by Gaussian elimination with partial pivoting. */
function solve(M: Float64Array, R: Float64Array, N: number, K: number): Float64Array {
  const a = M.slice(), x = R.slice();
  for (let c = 0; c < N; c++) {
    let p = c;
    for (let r = c + 1; r < N; r++) if (Math.abs(a[r * N + c]) > Math.abs(a[p * N + c])) p = r;
    if (p !== c) {
      for (let j = 0; j < N; j++) [a[c * N + j], a[p * N + j]] = [a[p * N + j], a[c * N + j]];
      for (let j = 0; j < K; j++) [x[c * K + j], x[p * K + j]] = [x[p * K + j], x[c * K + j]];
    }
    for (let r = 0; r < N; r++) {
      if (r === c) continue;
      const f = a[r * N + c] / a[c * N + c];
      if (f === 0) continue;
      for (let j = c; j < N; j++) a[r * N + j] -= f * a[c * N + j];
      for (let j = 0; j < K; j++) x[r * K + j] -= f * x[c * K + j];
    }
  }
  for (let r = 0; r < N; r++) for (let j = 0; j < K; j++) x[r * K + j] /= a[r * N + r];
  return x;
}

/**
 * Bilinear discretization of a dense SSM (e.g. HiPPO-LegS, as in the original S4):
 * A_bar = (I - delta/2 A)^-1 (I + delta/2 A), B_bar = (I - delta/2 A)^-1 delta B. A (N, N), B (N).
 *
 * @example
 * ```ts
 * import { bilinearDense, hippoLegS } from "seqlab";
 * const { A, B } = hippoLegS(2);
 * console.log(bilinearDense(A, B, 0.1).Abar.length); // 4
 * ```
 */
export function bilinearDense(
  A: ArrayLike<number>,
  B: ArrayLike<number>,
  delta: number,
): { Abar: Float64Array; Bbar: Float64Array } {
  const N = B.length;
  const M = new Float64Array(N * N), P = new Float64Array(N * N);
  for (let i = 0; i < N; i++) {
    for (let j = 0; j < N; j++) {
      M[i * N + j] = (i === j ? 1 : 0) - (delta / 2) * A[i * N + j];
      P[i * N + j] = (i === j ? 1 : 0) + (delta / 2) * A[i * N + j];
    }
  }
  return { Abar: solve(M, P, N, N), Bbar: solve(M, Float64Array.from(B, (b) => delta * b), N, 1) };
}

/**
 * Kernel K[l] = C A_bar^l B_bar (l < L) and recurrence y_t = C h_t, h_t = A_bar h_t-1 + B_bar u_t of a
 * dense discrete SSM (one channel; C (N)). `u` given: returns the recurrence's y (L); else the kernel (L).
 *
 * @example
 * ```ts
 * import { denseSSMRef } from "seqlab";
 * const Abar = new Float64Array([0.5]), Bbar = new Float64Array([1]), C = new Float64Array([2]);
 * console.log(Array.from(denseSSMRef(Abar, Bbar, C, 3))); // [2, 1, 0.5]
 * ```
 */
export function denseSSMRef(
  Abar: ArrayLike<number>,
  Bbar: ArrayLike<number>,
  C: ArrayLike<number>,
  L: number,
  u?: ArrayLike<number>,
): Float64Array {
  const N = Bbar.length;
  const out = new Float64Array(L);
  let v = u ? new Float64Array(N) : Float64Array.from(Bbar);
  for (let l = 0; l < L; l++) {
    if (u) {
      const next = new Float64Array(N);
      for (let i = 0; i < N; i++) {
        let acc = Bbar[i] * u[l];
        for (let j = 0; j < N; j++) acc += Abar[i * N + j] * v[j];
        next[i] = acc;
      }
      v = next;
    }
    let y = 0;
    for (let i = 0; i < N; i++) y += C[i] * v[i];
    out[l] = y;
    if (!u) {
      const next = new Float64Array(N);
      for (let i = 0; i < N; i++) {
        let acc = 0;
        for (let j = 0; j < N; j++) acc += Abar[i * N + j] * v[j];
        next[i] = acc;
      }
      v = next;
    }
  }
  return out;
}
