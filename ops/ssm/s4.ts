/**
 * S4: the diagonal initialisations (S4D-Lin, S4D-Real), the SSM convolution kernel, and the two ways to
 * run an LTI SSM over a sequence: convolution mode (the kernel as a causal depthwise convolution, direct or
 * by FFT, on the device, differentiable in u and K) and recurrent mode (the discretized recurrence, a shader on WebGPU).
 * Both give the same output. Parameters are host float64 {@link DiagSSM}s: small, and S4's complex
 * arithmetic (cos, sin of delta Im(A)) is done once on the host.
 * @module
 */

import type { DeviceName } from "../../runtime/device.ts";
import type { DType } from "../../runtime/dtype.ts";
import { gpu } from "../../runtime/device.ts";
import { fmt } from "../../runtime/shape.ts";
import { type Tensor, tidy } from "../../runtime/tensor.ts";
import { record } from "../../runtime/autograd.ts";
import { isFloat } from "../../runtime/dtype.ts";
import { grid } from "../../runtime/webgpu.ts";
import { rand, randn, tensor } from "../core/creation.ts";
import { add, contiguous, mul } from "../core/elementwise.ts";
import { gather } from "../core/layout.ts";
import { empty, fromArray, Uniforms } from "../core/util.ts";
import { causalConv1d } from "./conv1d.ts";
import { fftConvBackwardGpu, fftConvGpu } from "./fft.ts";
import { fftConvBackwardRef, fftConvRef } from "./fft_ref.ts";
import {
  type DiagSSM,
  discretizeDiag,
  ssmKernelRef,
  type SSMModeOptions,
  ssmRecurrenceRef,
} from "./s4_ref.ts";
import { recurrentV1, S4_MAX_LOOP, S4_WG } from "./s4_wgsl.ts";

/** Options of {@link s4dInit}. */
export interface S4DInitOptions {
  /** Seed of C and delta. */
  seed?: number;
  /** delta is log-uniform in [dtMin, dtMax] per channel (defaults 1e-3, 1e-1, as S4D). */
  dtMin?: number;
  /** Upper end of delta's range. */
  dtMax?: number;
}

/**
 * S4D initialisations of a diagonal SSM with D channels and N states: "lin" (S4D-Lin:
 * A_n = -1/2 + i pi n, complex, used with `conj: true`) or "real" (S4D-Real: A_n = -(n + 1), the
 * initialisation of Mamba's A_log); B = 1; C ~ N(0, 1) (complex: N(0, 1/2) per part); delta log-uniform
 * in [dtMin, dtMax].
 *
 * @example
 * ```ts
 * import { s4dInit } from "seqlab";
 * const ssm = s4dInit("lin", 2, 4, { seed: 0 });
 * console.log(ssm.Are[1], ssm.Aim![1].toFixed(4)); // -0.5 "3.1416"
 * console.log(Array.from(s4dInit("real", 1, 3).Are)); // [-1, -2, -3]
 * ```
 */
export function s4dInit(kind: "lin" | "real", D: number, N: number, opts: S4DInitOptions = {}): DiagSSM {
  if (kind !== "lin" && kind !== "real") {
    throw new Error(`s4dInit: kind must be "lin" or "real", got ${kind}`);
  }
  for (const [n, v] of [["D", D], ["N", N]] as const) {
    if (!Number.isInteger(v) || v < 1) throw new Error(`s4dInit: ${n} must be a positive integer, got ${v}`);
  }
  const { dtMin = 1e-3, dtMax = 1e-1, seed } = opts;
  const Are = new Float64Array(D * N), Aim = kind === "lin" ? new Float64Array(D * N) : null;
  for (let d = 0; d < D; d++) {
    for (let n = 0; n < N; n++) {
      Are[d * N + n] = kind === "lin" ? -0.5 : -(n + 1);
      if (Aim) Aim[d * N + n] = Math.PI * n;
    }
  }
  return tidy(() => {
    const o = { device: "cpu" as const, dtype: "f64" as const };
    const std = kind === "lin" ? Math.SQRT1_2 : 1;
    const Cre = randn([D, N], { ...o, std, seed }).storage.data as Float64Array;
    const Cim = kind === "lin"
      ? randn([D, N], { ...o, std, seed: seed === undefined ? undefined : seed + 1 })
      : null;
    const u = rand([D], { ...o, seed: seed === undefined ? undefined : seed + 2 }).storage
      .data as Float64Array;
    const delta = Float64Array.from(
      u,
      (x) => Math.exp(Math.log(dtMin) + x * (Math.log(dtMax) - Math.log(dtMin))),
    );
    return {
      D,
      N,
      Are,
      Aim,
      Bre: new Float64Array(D * N).fill(1),
      Bim: kind === "lin" ? new Float64Array(D * N) : null,
      Cre: Cre.slice(),
      Cim: Cim ? (Cim.storage.data as Float64Array).slice() : null,
      delta,
    };
  });
}

/**
 * The SSM convolution kernel K (D, L) of a diagonal SSM (see `ssmKernelRef`), as a tensor.
 *
 * @example
 * ```ts
 * import { s4dInit, ssmKernel } from "seqlab";
 * const K = ssmKernel(s4dInit("lin", 3, 8, { seed: 1 }), 64, { conj: true });
 * console.log(K.shape); // [3, 64]
 * ```
 */
export function ssmKernel(
  ssm: DiagSSM,
  L: number,
  opts: SSMModeOptions & { device?: DeviceName; dtype?: DType } = {},
): Tensor {
  if (!Number.isInteger(L) || L < 1) throw new Error(`ssmKernel: L must be a positive integer, got ${L}`);
  return tensor(ssmKernelRef(ssm, L, opts), {
    shape: [ssm.D, L],
    device: opts.device,
    dtype: opts.dtype ?? "f32",
  });
}

/** How {@link ssmConvolution} computes K * u. */
export type SSMConvolutionMethod = "direct" | "fft" | "auto";

/** Options of {@link ssmConvolution}. */
export interface SSMConvolutionOptions {
  /** Skip connection (D): adds Dskip[d] u[b, d, t]. */
  Dskip?: Tensor | null;
  /**
   * "direct" (a causal depthwise conv, O(L Lk) per channel), "fft" (O(n log n) with n = the power of two
   * >= L + Lk - 1), or "auto" (default): the faster at this kernel length on this device, by the measured
   * crossover {@link SSM_FFT_CROSSOVER}.
   */
  method?: SSMConvolutionMethod;
  /**
   * Shader version of the FFT path (`fft_wgsl.ts`): "v1" (Stockham radix-8 passes over textures) or
   * "auto" (default; today v1). Checked on every backend and method; the direct path runs causalConv1d's
   * "auto".
   */
  version?: "auto" | "v1";
}

/**
 * Where `method: "auto"` of {@link ssmConvolution} switches to the FFT, per device: from kernel length
 * `kernel` on, when the direct sum's work B D L Lk is at least `work`. The direct cost per output grows
 * with Lk, the FFT's with log n; on WebGPU a call of the FFT path also costs a fixed ~1-4 ms of passes
 * and copies, which the direct conv beats on small problems. Measured with `deno task bench ssm` on
 * Mesa lavapipe (2 cores shared with other jobs; the run in bench/results/ssm.json had load average 8
 * falling to 2), B = 1, medians of interleaved trials:
 * - webgpu, D = 64, Lk = L: even at L = 8 and 16 (1.7 vs 1.7, 1.1 vs 1.2 ms), the FFT faster from
 *   L = 32 (1.3 vs 1.8 ms, work B D L Lk = 65K), 3.5x at 64, 128x at 1K (14 ms vs 1.8 s). The same timing
 *   at D = 512: direct faster at L = 8 (work 33K), the FFT from L = 16 (work 131K); at D = 16: direct at
 *   L = 64 (work 65K), the FFT from 128. Hence work 1e5 (a miss near it costs under 1 ms).
 * - webgpu, L = 4096, D = 64, Lk = 2 ... 128: direct faster up to Lk = 8 (25 vs 73 ms), the FFT from
 *   Lk = 16 (81 vs 161 ms). Hence kernel 16.
 * - cpu (float64 loops), D = 64, Lk = L: the crossover was L = 128 in the recorded run (5.5 vs 7.9 ms),
 *   64 and 256 (at load average 9) in two others; the FFT was faster at 128 in two of the three. Hence
 *   kernel 128, no work threshold.
 *
 * @example
 * ```ts
 * import { SSM_FFT_CROSSOVER } from "seqlab";
 * console.log(SSM_FFT_CROSSOVER.webgpu.kernel > 1); // true
 * ```
 */
export const SSM_FFT_CROSSOVER: Readonly<Record<DeviceName, { kernel: number; work: number }>> = {
  webgpu: { kernel: 16, work: 1e5 },
  cpu: { kernel: 128, work: 0 },
};

/**
 * The method `ssmConvolution(u, K, { method: "auto" })` runs for u (B, D, L) and a kernel of length Lk
 * (cut to L) on `device`: "fft" past both thresholds of {@link SSM_FFT_CROSSOVER}, else "direct".
 *
 * @example
 * ```ts
 * import { ssmConvolutionMethod } from "seqlab";
 * console.log(ssmConvolutionMethod("webgpu", [1, 64, 8], 8)); // "direct"
 * console.log(ssmConvolutionMethod("webgpu", [1, 64, 4096], 4096)); // "fft"
 * ```
 */
export function ssmConvolutionMethod(
  device: DeviceName,
  [Bn, D, L]: readonly number[],
  Lk: number,
): "direct" | "fft" {
  const c = SSM_FFT_CROSSOVER[device], k = Math.min(Lk, L);
  return k >= c.kernel && Bn * D * L * k >= c.work ? "fft" : "direct";
}

const hostRows = (t: Tensor) => {
  const c = contiguous(t);
  const a = c.storage.data!.slice(c.offset, c.offset + c.size);
  c.dispose();
  return a;
};

/** y = K * u by FFT, recorded with its own backward (correlations by FFT). K (D, Lk) is contiguous. */
function convFft(u: Tensor, K: Tensor): Tensor {
  const Lk = K.shape[1];
  let y: Tensor;
  if (u.device === "cpu") {
    y = fromArray(fftConvRef(hostRows(u), u.shape, hostRows(K), Lk), u.shape, u.dtype, "cpu");
  } else {
    const uc = contiguous(u);
    y = fftConvGpu(uc, K);
    uc.dispose();
  }
  return record("ssmConvolution", y, [u, K], [u, K], (g, [us, ks]) => {
    if (us.device === "cpu") {
      const r = fftConvBackwardRef(hostRows(g), hostRows(us), us.shape, hostRows(ks), Lk);
      return [fromArray(r.du, us.shape, us.dtype, "cpu"), fromArray(r.dK, ks.shape, ks.dtype, "cpu")];
    }
    const [gc, uc] = [contiguous(g), contiguous(us)];
    try {
      return fftConvBackwardGpu(gc, uc, ks);
    } finally {
      gc.dispose();
      uc.dispose();
    }
  });
}

/**
 * Convolution mode: y = K * u (causal, per channel) + Dskip u, i.e. y[b, d, t] = sum_{s <= t} K[d, t - s]
 * u[b, d, s] for u (B, D, L) and a kernel K (D, Lk) with Lk <= L (longer kernels are cut to L).
 * `method`: "direct" runs the causal depthwise conv with the kernel reversed in time (on WebGPU conv1d
 * v1, a direct O(L Lk) sum per output); "fft" zero-pads to n = nextPow2(L + Lk - 1) and multiplies
 * spectra (on WebGPU the texture FFT of `fft_wgsl.ts`, on cpu the float64 {@link fftConvRef}); "auto"
 * (default) picks by {@link ssmConvolutionMethod}. Differentiable in u, K and Dskip with either method
 * (the FFT path's backward is two correlations by FFT).
 *
 * @example
 * ```ts
 * import { ssmConvolution, tensor } from "seqlab";
 * const u = tensor([[[1, 0, 0, 2]]]), K = tensor([[1, 0.5, 0.25]]);
 * console.log(await ssmConvolution(u, K).toArray()); // [1, 0.5, 0.25, 2]
 * const y = await ssmConvolution(u, K, { method: "fft" }).toArray();
 * console.log(Array.from(y, (v) => +v.toFixed(5))); // [1, 0.5, 0.25, 2]
 * ```
 */
export function ssmConvolution(u: Tensor, K: Tensor, opts: SSMConvolutionOptions = {}): Tensor {
  const op = "ssmConvolution";
  const method = opts.method ?? "auto";
  if (!["auto", "direct", "fft"].includes(method)) {
    throw new Error(`${op}: method must be "direct", "fft" or "auto", got ${JSON.stringify(method)}`);
  }
  const version = opts.version ?? "auto";
  if (version !== "auto" && version !== "v1") {
    throw new Error(`${op}: version must be "auto" or "v1", got ${JSON.stringify(version)}`);
  }
  const all = [u, K, ...(opts.Dskip ? [opts.Dskip] : [])];
  for (const t of all) {
    t.check(op);
    if (!isFloat(t.dtype)) throw new Error(`${op}: needs float tensors, got ${t.describe()}`);
    if (t.device !== u.device || t.dtype !== u.dtype) {
      throw new Error(`${op}: devices or dtypes differ: ${all.map((t) => t.describe()).join(", ")}`);
    }
  }
  if (u.rank !== 3) throw new Error(`${op}: u must be (B, D, L), got ${u.describe()}`);
  if (K.rank !== 2 || K.shape[0] !== u.shape[1] || K.shape[1] < 1) {
    throw new Error(
      `${op}: K must be (D, Lk) with D = ${u.shape[1]} (u ${fmt(u.shape)}) and Lk >= 1, got ${fmt(K.shape)}`,
    );
  }
  if (opts.Dskip && (opts.Dskip.rank !== 1 || opts.Dskip.shape[0] !== u.shape[1])) {
    throw new Error(`${op}: Dskip must be (D) = [${u.shape[1]}], got ${fmt(opts.Dskip.shape)}`);
  }
  if (u.device === "webgpu" && u.dtype !== "f32") {
    throw new Error(`${op}: WebGPU computes in f32, got ${u.describe()}`);
  }
  const L = u.shape[2], Lk = Math.min(K.shape[1], L);
  const fft = u.size > 0 &&
    (method === "fft" || (method === "auto" && ssmConvolutionMethod(u.device, u.shape, Lk) === "fft"));
  return tidy(() => {
    const Kc = K.shape[1] === Lk ? K : K.slice([null, [0, Lk]]);
    let y: Tensor;
    if (fft) y = convFft(u, contiguous(Kc));
    else {
      const rev = tensor(Array.from({ length: Lk }, (_, i) => Lk - 1 - i), {
        dtype: "i32",
        device: K.device,
      });
      y = causalConv1d(u, contiguous(gather(Kc, rev, 1))); // the kernel reversed in time
    }
    return opts.Dskip ? add(y, mul(u, opts.Dskip.unsqueeze(-1))) : y;
  });
}

/**
 * Recurrent mode: h_t = A_bar h_t-1 + B_bar u_t, y_t = s Re(C h_t) + Dskip u_t (s = 2 with `conj`) for
 * u (B, D, L) on cpu (the float64 reference, `ssmRecurrenceRef`) or WebGPU (recurrent v1, f32). The
 * discretization and the conjugate convention are those of {@link ssmKernel}, so this equals
 * `ssmConvolution(u, ssmKernel(ssm, L, opts))`. Not differentiable (a decoding and testing path).
 *
 * @example
 * ```ts
 * import { randn, s4dInit, ssmConvolution, ssmKernel, ssmRecurrence } from "seqlab";
 * const ssm = s4dInit("real", 2, 4, { seed: 1 });
 * const u = randn([1, 2, 16], { seed: 2 });
 * const a = ssmRecurrence(u, ssm), b = ssmConvolution(u, ssmKernel(ssm, 16));
 * console.log(a.shape, b.shape); // [1, 2, 16] [1, 2, 16]
 * ```
 */
export function ssmRecurrence(
  u: Tensor,
  ssm: DiagSSM,
  opts: SSMModeOptions & { Dskip?: ArrayLike<number> | null } = {},
): Tensor {
  const op = "ssmRecurrence";
  u.check(op);
  if (u.rank !== 3 || u.shape[1] !== ssm.D) {
    throw new Error(`${op}: u must be (B, D, L) with D = ${ssm.D} (the SSM's channels), got ${u.describe()}`);
  }
  if (opts.Dskip && opts.Dskip.length !== ssm.D) {
    throw new Error(`${op}: Dskip must have D = ${ssm.D} values, got ${opts.Dskip.length}`);
  }
  const [Bn, D, L] = u.shape, N = ssm.N;
  if (u.device === "cpu") {
    const c = contiguous(u);
    const y = ssmRecurrenceRef(c.storage.data!.subarray(c.offset, c.offset + c.size), u.shape, ssm, opts);
    c.dispose();
    return fromArray(y, u.shape, u.dtype, "cpu");
  }
  if (u.dtype !== "f32") throw new Error(`${op}: WebGPU computes in f32, got ${u.describe()}`);
  const { Abar: [ar, ai], Bbar: [br, bi] } = discretizeDiag(ssm, opts.method ?? "zoh");
  const s = opts.conj ? 2 : 1;
  const P = new Float32Array(D * 6 * N);
  for (let d = 0; d < D; d++) {
    for (let n = 0; n < N; n++) {
      const i = d * N + n, o = d * 6 * N + n;
      P[o] = ar[i];
      P[o + N] = ai[i];
      P[o + 2 * N] = br[i];
      P[o + 3 * N] = bi[i];
      P[o + 4 * N] = s * ssm.Cre[i];
      P[o + 5 * N] = s * (ssm.Cim ? ssm.Cim[i] : 0);
    }
  }
  const params = fromArray(P, [D, 6 * N], "f32", "webgpu", "s4 params");
  const skip = fromArray(opts.Dskip ?? new Float32Array(D), [D], "f32", "webgpu", "s4 skip");
  const uc = contiguous(u);
  const out = empty(op, [Bn, D, L], "f32", "webgpu");
  const state = empty(`${op} state`, [Bn * D, 2 * N], "f32", "webgpu");
  try {
    for (let t0 = 0; t0 < L; t0 += S4_MAX_LOOP) {
      gpu().run({
        name: op,
        key: `v1|${N}`,
        source: () => recurrentV1(N),
        inputs: [params, uc, skip].map((t) => t.storage.buffer!),
        outputs: [out.storage.buffer!, state.storage.buffer!],
        uniforms: new Uniforms().u32(Bn * D, D, L, uc.offset, t0, Math.min(L, t0 + S4_MAX_LOOP)).padTo(8)
          .build(),
        workgroups: grid(Bn * D, S4_WG),
      });
    }
  } finally {
    for (const t of [params, skip, uc, state]) t.dispose();
  }
  return out;
}
