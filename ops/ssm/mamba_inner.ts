/**
 * The inner part of a selective Mamba block in training (mamba_ssm's `mamba_inner_fn`): from the
 * in-projection's output xz (B, L, 2 ED) to the gated scan output (B, L, ED) that out_proj reads, as one
 * autograd node. Its backward writes the conv's dx and the scan's dz straight into the two halves of one
 * (B, L, 2 ED) gradient, and assembles x_proj's output gradient in place, so the in-projection split and
 * the delta / B / C split cost no zero-fill, copy or add.
 * @module
 */

import { isGradEnabled, noGrad, record } from "../../runtime/autograd.ts";
import { type Tensor, tidy } from "../../runtime/tensor.ts";
import { add, copyInto, exp, mul, neg } from "../core/elementwise.ts";
import { matmul } from "../core/matmul.ts";
import { empty } from "../core/util.ts";
import { causalConv1d, convGrads } from "./conv1d.ts";
import { CONV_V2_MAX_W } from "./conv1d_wgsl.ts";
import {
  type PackedScan,
  scanGrads,
  scanPacked,
  selectiveScan,
  type SelectiveScanGpuOptions,
} from "./selective_scan.ts";

/** The parameters of {@link mambaInner} (seqlab's Linear layout: weight (in, out)). */
export interface MambaInnerParams {
  /** (ED, W). */
  convWeight: Tensor;
  /** (ED) or null. */
  convBias: Tensor | null;
  /** (ED, R + 2N): x_proj, no bias. */
  xProjWeight: Tensor;
  /** (R, ED): dt_proj's weight. */
  dtProjWeight: Tensor;
  /** (ED): dt_proj's bias, the scan's deltaBias. */
  dtProjBias: Tensor;
  /** (ED, N): A = -exp(ALog). */
  ALog: Tensor;
  /** (ED): the skip. */
  D: Tensor;
}

/** Options of {@link mambaInner}. */
export interface MambaInnerOptions {
  /** Passed to the selective scan. */
  scan?: Pick<SelectiveScanGpuOptions, "version" | "chunkSize" | "carry" | "backward">;
  /**
   * "fused" (one node; WebGPU, f32, conv width <= 8), "composed" (the ops one by one, each its own node:
   * the reference), "auto" (default) fused where it can run.
   */
  version?: "auto" | "fused" | "composed";
}

function dims(xz: Tensor, p: MambaInnerParams) {
  const ED = p.D.shape[0], N = p.ALog.shape[1], R = p.dtProjWeight.shape[0];
  if (xz.rank !== 3 || xz.shape[2] !== 2 * ED) {
    throw new Error(`mambaInner: xz must be (B, L, 2 ED) with ED = ${ED}, got ${xz.describe()}`);
  }
  if (p.xProjWeight.rank !== 2 || p.xProjWeight.shape[0] !== ED || p.xProjWeight.shape[1] !== R + 2 * N) {
    throw new Error(
      `mambaInner: xProjWeight must be (ED, R + 2N) = [${ED}, ${R + 2 * N}], got ${p.xProjWeight.describe()}`,
    );
  }
  return { Bn: xz.shape[0], L: xz.shape[1], ED, N, R };
}

/**
 * x and z of xz (B, L, 2 ED) as (B, ED, L) views, and delta, B, C of x_proj's output (B L, R + 2N) as
 * (B, ED, L) / (B, N, L) views: channels-last, read by the conv and the scan through their strides.
 */
function views(xz: Tensor, xdbl: Tensor | null, dt: Tensor | null, d: ReturnType<typeof dims>) {
  const { Bn, L, ED, N, R } = d;
  const x = xz.slice([null, null, [0, ED]]).transpose(1, 2),
    z = xz.slice([null, null, [ED, 2 * ED]]).transpose(1, 2);
  if (!xdbl || !dt) return { x, z };
  const x3 = xdbl.reshape([Bn, L, R + 2 * N]);
  return {
    x,
    z,
    delta: dt.reshape([Bn, L, ED]).transpose(1, 2),
    B: x3.slice([null, null, [R, R + N]]).transpose(1, 2),
    C: x3.slice([null, null, [R + N, R + 2 * N]]).transpose(1, 2),
  };
}

/** The composition of the ops, each recording its own node: the reference of the fused version. */
function composed(xz: Tensor, p: MambaInnerParams, o: MambaInnerOptions): Tensor {
  const d = dims(xz, p);
  const { Bn, L, ED, R } = d;
  return tidy(() => {
    const { x, z } = views(xz, null, null, d);
    const xc = causalConv1d(x, p.convWeight, { bias: p.convBias, activation: "silu", channelsLast: true });
    const xdbl = matmul(xc.transpose(1, 2).reshape([Bn * L, ED]), p.xProjWeight); // (B L, R + 2N)
    const dt = matmul(xdbl.slice([null, [0, R]]), p.dtProjWeight); // (B L, ED)
    const v = views(xz, xdbl, dt, d);
    const y = selectiveScan(xc, v.delta!, neg(exp(p.ALog)), v.B!, v.C!, {
      ...o.scan,
      D: p.D,
      z,
      deltaBias: p.dtProjBias,
      deltaSoftplus: true,
      channelsLast: true,
    });
    return y.transpose(1, 2); // (B, L, ED)
  });
}

/**
 * One selective Mamba block's inner part: xz (B, L, 2 ED), the in-projection's output, to
 * y = scan(silu(conv(x)), delta, A, B, C; D, z) (B, L, ED), the input of out_proj, with
 * (delta', B, C) = x_proj(silu(conv(x))), delta = dt_proj(delta'), A = -exp(ALog), the softplus on delta
 * + dt_proj's bias. "fused" records it as one node (see the module doc); "composed" runs the ops one by
 * one and is its reference. Both run every kernel on (B, L, ·) activations without transposing copies.
 *
 * @example
 * ```ts
 * import { mambaInner, randn, zeros } from "seqlab";
 * const [ED, N, R, W] = [8, 4, 1, 4];
 * const p = {
 *   convWeight: randn([ED, W], { seed: 1 }), convBias: zeros([ED]), xProjWeight: randn([ED, R + 2 * N], { seed: 2 }),
 *   dtProjWeight: randn([R, ED], { seed: 3 }), dtProjBias: zeros([ED]), ALog: zeros([ED, N]), D: zeros([ED]),
 * };
 * console.log(mambaInner(randn([2, 5, 2 * ED], { seed: 4 }), p).shape); // [2, 5, 8]
 * ```
 */
export function mambaInner(xz: Tensor, p: MambaInnerParams, opts: MambaInnerOptions = {}): Tensor {
  const version = opts.version ?? "auto";
  if (!["auto", "fused", "composed"].includes(version)) {
    throw new Error(
      `mambaInner: version must be "auto", "fused" or "composed", got ${JSON.stringify(version)}`,
    );
  }
  const d = dims(xz, p);
  const fusable = xz.device === "webgpu" && xz.dtype === "f32" && p.convWeight.shape[1] <= CONV_V2_MAX_W;
  if (version === "fused" && !fusable) {
    throw new Error(
      `mambaInner: version "fused" runs on webgpu in f32 with a conv width up to ${CONV_V2_MAX_W}; got ` +
        `${xz.describe()}, convWeight ${p.convWeight.describe()}`,
    );
  }
  if (!fusable || version === "composed") return composed(xz, p, opts);
  const { Bn, L, ED, N, R } = d;
  const params = [
    p.convWeight,
    ...(p.convBias ? [p.convBias] : []),
    p.xProjWeight,
    p.dtProjWeight,
    p.dtProjBias,
  ];
  const inputs = [xz, ...params, p.ALog, p.D];
  const graph = isGradEnabled() && inputs.some((t) => t.requiresGrad);
  // the forward's intermediates, kept for the backward: xc (B, ED, L) channels-last, x_proj's output
  // (B L, R + 2N), delta before its bias (B L, ED)
  // with a graph, the scan's packed operands stay for its backward (released with the node)
  let packed: PackedScan | null = null;
  const [y, xc, xdbl, dt, A] = noGrad(() =>
    tidy(() => {
      const { x, z } = views(xz, null, null, d);
      const xc = causalConv1d(x, p.convWeight, { bias: p.convBias, activation: "silu", channelsLast: true });
      const xdbl = matmul(xc.transpose(1, 2).reshape([Bn * L, ED]), p.xProjWeight);
      const dt = matmul(xdbl.slice([null, [0, R]]), p.dtProjWeight);
      const v = views(xz, xdbl, dt, d);
      const so = {
        ...opts.scan,
        D: p.D,
        z,
        deltaBias: p.dtProjBias,
        deltaSoftplus: true,
        channelsLast: true,
      };
      const A = neg(exp(p.ALog));
      let y: Tensor;
      if (graph) ({ out: y, packed } = scanPacked(xc, v.delta!, A, v.B!, v.C!, so));
      else y = selectiveScan(xc, v.delta!, A, v.B!, v.C!, so);
      return [y.transpose(1, 2), xc, xdbl, dt, A]; // (B, L, ED) contiguous
    })
  );
  if (!graph) {
    for (const t of [xc, xdbl, dt, A]) t.dispose();
    return y;
  }
  const hasBias = !!p.convBias;
  const kept = packed as PackedScan | null;
  const out = record("mambaInner", y, inputs, [...inputs, xc, xdbl, dt, A], (g, s) => {
    const [xzS, convW] = s;
    let k = 2;
    const convB = hasBias ? s[k++] : null;
    const [xProjW, dtW, dtB, , Dk, xcS, xdblS, dtS, A] = s.slice(k); // A = -exp(ALog), from the forward
    const v = views(xzS, xdblS, dtS, d);
    // one (B, L, 2 ED) gradient: the scan's dz lands in its second half, the conv's dx in its first
    const dxz = empty("mambaInner dxz", [Bn, L, 2 * ED], "f32", "webgpu");
    const halves = views(dxz, null, null, d);
    // x_proj's output gradient (B, L, R + 2N) = [ddt dt_proj^T, dB^T, dC^T]: the scan's reduce stores dB and dC
    // straight into their (B, N, L) views of it
    const dx3 = empty("mambaInner dxdbl", [Bn, L, R + 2 * N], "f32", "webgpu");
    const bcInto = {
      dB: dx3.slice([null, null, [R, R + N]]).transpose(1, 2),
      dC: dx3.slice([null, null, [R + N, R + 2 * N]]).transpose(1, 2),
    };
    const sg = scanGrads(
      xcS,
      v.delta!,
      A,
      v.B!,
      v.C!,
      { D: Dk, z: v.z, deltaBias: dtB, deltaSoftplus: true },
      g.transpose(1, 2),
      { channelsLast: true, dzInto: halves.z, packed: kept, bcInto, backward: opts.scan?.backward },
    );
    sg.dz?.dispose();
    const ddt = sg.ddelta.transpose(1, 2).reshape([Bn * L, ED]); // channels-last: a view
    const xdR = xdblS.slice([null, [0, R]]);
    copyInto(dx3.slice([null, null, [0, R]]), matmul(ddt, dtW.transpose()).reshape([Bn, L, R]));
    if (sg.dB.storage !== dx3.storage) { // the scan's other versions return their own dB, dC
      copyInto(bcInto.dB, sg.dB);
      copyInto(bcInto.dC, sg.dC);
    }
    const dxdbl = dx3.reshape([Bn * L, R + 2 * N]);
    const xc2 = xcS.transpose(1, 2).reshape([Bn * L, ED]);
    const dxc = add(sg.du.transpose(1, 2).reshape([Bn * L, ED]), matmul(dxdbl, xProjW.transpose())); // (B L, ED)
    const [, dConvW, dConvB] = convGrads(
      dxc.reshape([Bn, L, ED]).transpose(1, 2),
      v.x,
      convW,
      convB,
      { silu: true, channelsLast: true, dxInto: halves.x },
    );
    return [
      dxz,
      dConvW,
      ...(hasBias ? [dConvB] : []),
      matmul(xc2.transpose(), dxdbl), // x_proj (ED, R + 2N)
      matmul(xdR.transpose(), ddt), // dt_proj (R, ED)
      sg.dDeltaBias,
      mul(sg.dA, A), // dA/dALog = -exp(ALog) = A
      sg.dD,
    ];
  }, kept ? [kept] : []);
  for (const t of [xc, xdbl, dt, A]) t.dispose();
  return out;
}
