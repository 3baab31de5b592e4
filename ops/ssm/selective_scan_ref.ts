/**
 * The selective scan (S6) reference in float64: plain loops, sequential in time. The oracle for every
 * shader version and for the backward pass.
 * @module
 */

import type { Tensor } from "../../runtime/tensor.ts";
import { fromArray } from "../core/util.ts";
import { checkAHost, checkScan, type ScanDims, type SelectiveScanOptions } from "./scan_check.ts";

/** softplus with PyTorch's threshold: x above 20 passes through. */
export function softplusRef(x: number): number {
  return x > 20 ? x : Math.log1p(Math.exp(x));
}

function host(t: Tensor | null | undefined): Float64Array | null {
  if (!t) return null;
  const c = t.contiguous();
  const out = Float64Array.from(c.storage.data!.subarray(c.offset, c.offset + c.size) as ArrayLike<number>);
  c.dispose();
  return out;
}

/** Host views of validated scan inputs, with the index helpers every reference loop needs. */
export interface ScanHost {
  dims: ScanDims;
  u: Float64Array;
  delta: Float64Array;
  A: Float64Array;
  B: Float64Array;
  C: Float64Array;
  D: Float64Array | null;
  z: Float64Array | null;
  bias: Float64Array | null;
  softplus: boolean;
  /** Flat index of B[b, group of d, n, t] (or B[d, n] when shared). */
  bAt: (b: number, d: number, n: number, t: number) => number;
  /** Same for C. */
  cAt: (b: number, d: number, n: number, t: number) => number;
}

/** Reads validated cpu inputs into float64 arrays. */
export function scanHost(
  op: string,
  u: Tensor,
  delta: Tensor,
  A: Tensor,
  B: Tensor,
  C: Tensor,
  o: SelectiveScanOptions,
): ScanHost {
  const dims = checkScan(op, u, delta, A, B, C, o);
  if (dims.device !== "cpu") throw new Error(`${op}: the reference needs cpu tensors, got ${u.describe()}`);
  const { D, N, L, G } = dims;
  const H = D / G;
  checkAHost(op, A);
  const a = host(A)!;
  const at = (shared: boolean) =>
    shared
      ? (_b: number, d: number, n: number) => d * N + n
      : (b: number, d: number, n: number, t: number) => ((b * G + Math.floor(d / H)) * N + n) * L + t;
  return {
    dims,
    u: host(u)!,
    delta: host(delta)!,
    A: a,
    B: host(B)!,
    C: host(C)!,
    D: host(o.D),
    z: host(o.z),
    bias: host(o.deltaBias),
    softplus: !!o.deltaSoftplus,
    bAt: at(dims.bShared),
    cAt: at(dims.cShared),
  };
}

/**
 * The selective scan, as mamba's `selective_scan_ref` (docs/papers.md, Mamba), in float64 on cpu tensors.
 * This doc comment is the shape spec:
 *
 * - `u`: (B, D, L) input; `delta`: (B, D, L) step sizes;
 * - `A`: (D, N) real state matrix (diagonal per channel), non-positive;
 * - `B`, `C`: shared (D, N), input-dependent (B, N, L), or grouped (B, G, N, L) with G dividing D
 *   (channel d reads group floor(d / (D / G)));
 * - options: `D` (D) skip, `z` (B, D, L) gate, `deltaBias` (D), `deltaSoftplus`, `returnLastState`.
 *
 * delta' = softplus(delta + deltaBias) (or without softplus); dA = exp(delta' A); dBu = delta' B u
 * (the simplified discretization); h_t = dA_t h_{t-1} + dBu_t from h_{-1} = 0; y_t = <h_t, C_t>;
 * out = (y + D u) * silu(z). Returns out (B, D, L) as f64, and with `returnLastState` also h_{L-1}
 * (B, D, N): `[out, lastState]`.
 *
 * @example
 * ```ts
 * import { selectiveScanRef, tensor } from "seqlab";
 * const o = { device: "cpu" } as const;
 * // one channel, one state, A = 0 and delta = 1: h is the running sum of u, y = h * C
 * const u = tensor([[[1, 2, 3]]], o), delta = tensor([[[1, 1, 1]]], o);
 * const y = selectiveScanRef(u, delta, tensor([[0]], o), tensor([[1]], o), tensor([[2]], o));
 * console.log(await y.toArray()); // Float64Array [2, 6, 12]
 * ```
 */
export function selectiveScanRef(
  u: Tensor,
  delta: Tensor,
  A: Tensor,
  B: Tensor,
  C: Tensor,
  opts: SelectiveScanOptions & { returnLastState: true },
): [Tensor, Tensor];
/** The reference returning only the output (see the overload above). */
export function selectiveScanRef(
  u: Tensor,
  delta: Tensor,
  A: Tensor,
  B: Tensor,
  C: Tensor,
  opts?: SelectiveScanOptions,
): Tensor;
export function selectiveScanRef(
  u: Tensor,
  delta: Tensor,
  A: Tensor,
  B: Tensor,
  C: Tensor,
  opts: SelectiveScanOptions = {},
): Tensor | [Tensor, Tensor] {
  const h = scanHost("selectiveScanRef", u, delta, A, B, C, opts);
  const { Bn, D, N, L } = h.dims;
  const out = new Float64Array(Bn * D * L), last = new Float64Array(Bn * D * N);
  const x = new Float64Array(N);
  for (let b = 0; b < Bn; b++) {
    for (let d = 0; d < D; d++) {
      x.fill(0);
      const row = (b * D + d) * L;
      for (let t = 0; t < L; t++) {
        let dt = h.delta[row + t] + (h.bias ? h.bias[d] : 0);
        if (h.softplus) dt = softplusRef(dt);
        const uu = h.u[row + t];
        let y = 0;
        for (let n = 0; n < N; n++) {
          x[n] = Math.exp(dt * h.A[d * N + n]) * x[n] + dt * h.B[h.bAt(b, d, n, t)] * uu;
          y += x[n] * h.C[h.cAt(b, d, n, t)];
        }
        if (h.D) y += h.D[d] * uu;
        if (h.z) {
          const zz = h.z[row + t];
          y *= zz / (1 + Math.exp(-zz));
        }
        out[row + t] = y;
      }
      last.set(x, (b * D + d) * N);
    }
  }
  const o = fromArray(out, [Bn, D, L], "f64", "cpu");
  return opts.returnLastState ? [o, fromArray(last, [Bn, D, N], "f64", "cpu")] : o;
}

/** Gradients of the selective scan's inputs; null where the input was not given. Shapes as the inputs. */
export interface SelectiveScanGrads {
  /** (B, D, L). */
  du: Float64Array;
  /** (B, D, L), through the softplus. */
  ddelta: Float64Array;
  /** (D, N). */
  dA: Float64Array;
  /** B's shape. */
  dB: Float64Array;
  /** C's shape. */
  dC: Float64Array;
  /** (D). */
  dD: Float64Array | null;
  /** (B, D, L). */
  dz: Float64Array | null;
  /** (D). */
  dDeltaBias: Float64Array | null;
}

/**
 * The selective scan's backward in float64: given the output gradient `dout` (B, D, L) and/or the last
 * state's gradient `dlast` (B, D, N), the gradients of u, delta, A, B, C, D, z and deltaBias. A reverse
 * scan of the state adjoint g_t = C_t dy_t + dA_{t+1} g_{t+1} (g_{L-1} starts from dlast), with
 * dB_t += g_t delta'_t u_t, du_t += sum_n g_t delta'_t B_t + D dy_t,
 * d delta'_t = sum_n g_t (A dA_t h_{t-1} + B_t u_t), dA += g_t delta'_t dA_t h_{t-1},
 * and the chain rule through softplus and the gate. The oracle for the WebGPU backward; also the cpu
 * backward of {@link selectiveScan}.
 *
 * @example
 * ```ts
 * import { selectiveScanBackwardRef, tensor } from "seqlab";
 * const o = { device: "cpu" } as const;
 * const u = tensor([[[1, 2]]], o), delta = tensor([[[1, 1]]], o);
 * const g = selectiveScanBackwardRef(u, delta, tensor([[0]], o), tensor([[1]], o), tensor([[1]], o), {}, {
 *   dout: tensor([[[1, 1]]], o),
 * });
 * console.log(g.du); // Float64Array [2, 1]: u_0 reaches both outputs, u_1 only the second
 * ```
 */
export function selectiveScanBackwardRef(
  u: Tensor,
  delta: Tensor,
  A: Tensor,
  B: Tensor,
  C: Tensor,
  opts: SelectiveScanOptions,
  grads: { dout?: Tensor | null; dlast?: Tensor | null },
): SelectiveScanGrads {
  const h = scanHost("selectiveScanBackwardRef", u, delta, A, B, C, opts);
  const { Bn, D, N, L } = h.dims;
  const dout = host(grads.dout), dlast = host(grads.dlast);
  const r: SelectiveScanGrads = {
    du: new Float64Array(Bn * D * L),
    ddelta: new Float64Array(Bn * D * L),
    dA: new Float64Array(D * N),
    dB: new Float64Array(h.B.length),
    dC: new Float64Array(h.C.length),
    dD: h.D ? new Float64Array(D) : null,
    dz: h.z ? new Float64Array(Bn * D * L) : null,
    dDeltaBias: h.bias ? new Float64Array(D) : null,
  };
  const hs = new Float64Array((L + 1) * N); // hs[(t + 1) N + n] = h_t; hs[0..N) = h_{-1} = 0
  const dts = new Float64Array(L), pre = new Float64Array(L);
  const g = new Float64Array(N);
  for (let b = 0; b < Bn; b++) {
    for (let d = 0; d < D; d++) {
      const row = (b * D + d) * L;
      for (let t = 0; t < L; t++) {
        pre[t] = h.delta[row + t] + (h.bias ? h.bias[d] : 0);
        dts[t] = h.softplus ? softplusRef(pre[t]) : pre[t];
        for (let n = 0; n < N; n++) {
          hs[(t + 1) * N + n] = Math.exp(dts[t] * h.A[d * N + n]) * hs[t * N + n] +
            dts[t] * h.B[h.bAt(b, d, n, t)] * h.u[row + t];
        }
      }
      for (let n = 0; n < N; n++) g[n] = dlast ? dlast[(b * D + d) * N + n] : 0; // a_{t+1} g_{t+1}
      for (let t = L - 1; t >= 0; t--) {
        const uu = h.u[row + t], dt = dts[t];
        let dy = dout ? dout[row + t] : 0;
        if (h.z) {
          const zz = h.z[row + t], sg = 1 / (1 + Math.exp(-zz));
          let y = h.D ? h.D[d] * uu : 0;
          for (let n = 0; n < N; n++) y += hs[(t + 1) * N + n] * h.C[h.cAt(b, d, n, t)];
          r.dz![row + t] = dy * y * sg * (1 + zz * (1 - sg));
          dy *= zz * sg;
        }
        if (h.D) {
          r.dD![d] += dy * uu;
          r.du[row + t] += h.D[d] * dy;
        }
        let dDt = 0;
        for (let n = 0; n < N; n++) {
          const a = Math.exp(dt * h.A[d * N + n]);
          const bi = h.bAt(b, d, n, t), ci = h.cAt(b, d, n, t);
          const gn = g[n] + h.C[ci] * dy;
          r.dC[ci] += dy * hs[(t + 1) * N + n];
          r.dB[bi] += gn * dt * uu;
          r.du[row + t] += gn * dt * h.B[bi];
          const ah = a * hs[t * N + n]; // dA_t h_{t-1}
          dDt += gn * (h.A[d * N + n] * ah + h.B[bi] * uu);
          r.dA[d * N + n] += gn * dt * ah;
          g[n] = a * gn;
        }
        const dpre = h.softplus ? (pre[t] > 20 ? dDt : dDt / (1 + Math.exp(-pre[t]))) : dDt;
        r.ddelta[row + t] = dpre;
        if (r.dDeltaBias) r.dDeltaBias[d] += dpre;
      }
    }
  }
  return r;
}
