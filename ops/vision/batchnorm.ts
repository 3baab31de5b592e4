/**
 * 2-D batch normalisation (NCHW, PyTorch's `batch_norm`): {@link batchNorm2d}, training (batch statistics,
 * running statistics updated in place) or evaluation (running statistics), optional affine weight and bias,
 * differentiable on both backends (training's backward goes through the batch statistics).
 *
 * How (WebGPU, `batchnorm_wgsl.ts`): training runs three passes: per-chunk Welford statistics, a
 * per-channel merge (Chan's rule) that also moves the running statistics, and one fused normalising pass;
 * evaluation runs the per-channel pass on the running statistics, then the same normalising pass. The
 * backward is three passes as well: per-chunk sums of dy and dy xhat, a per-channel pass giving dweight,
 * dbias and dx's coefficients, and one pass for dx. The cpu path and the oracle are the float64 loops in
 * `batchnorm_ref.ts`. Bad input throws a {@link ConvError}.
 * @module
 */

import { isGradEnabled, record } from "../../runtime/autograd.ts";
import { gpu } from "../../runtime/device.ts";
import { fmt } from "../../runtime/shape.ts";
import type { Tensor } from "../../runtime/tensor.ts";
import { grid, MAX_LOOP } from "../../runtime/webgpu.ts";
import { empty, Uniforms } from "../core/util.ts";
import { ConvError } from "./conv2d.ts";
import {
  batchNorm2dBackwardRef,
  batchNorm2dRef,
  batchNormStatsRef,
  runningUpdateRef,
} from "./batchnorm_ref.ts";
import {
  BN_WG,
  bnBackwardDxSource,
  bnBackwardFinishSource,
  bnBackwardSumsSource,
  bnFinishSource,
  type BnGeometry,
  bnKey,
  bnNormalizeSource,
  bnStatsSource,
} from "./batchnorm_wgsl.ts";
import { checkImage, strided4 } from "./pool.ts";

/** Options of {@link batchNorm2d}. */
export interface BatchNorm2dOptions {
  /** (C), multiplies the normalised values (gamma); null or absent: 1. */
  weight?: Tensor | null;
  /** (C), added after (beta); null or absent: 0. */
  bias?: Tensor | null;
  /** (C), the running mean: updated in place in training, used in evaluation. */
  runningMean?: Tensor | null;
  /** (C), the running (unbiased) variance: updated in place in training, used in evaluation. */
  runningVar?: Tensor | null;
  /** Batch statistics (true, the default) or the running ones (false). */
  training?: boolean;
  /** Weight of the batch in the running statistics' update, in [0, 1] (default 0.1). */
  momentum?: number;
  /** Added to the variance before the square root (default 1e-5). */
  eps?: number;
}

/** Pixels per statistics chunk and per elementwise chunk (each a loop in one invocation). */
const STATS_CHUNK = 1024, EW_CHUNK = 64;

/** The chunking of x (N, C, H, W) for the shaders; the merge loops over N KP chunks, at most MAX_LOOP. */
function bnGeometry(shape: readonly number[]): BnGeometry {
  const [N, C, H, W] = shape, HW = H * W;
  if (N > MAX_LOOP) {
    throw new ConvError(
      `batchNorm2d: x ${fmt(shape)} has ${N} images, over ${MAX_LOOP} for one statistics merge`,
    );
  }
  let CS = Math.max(1, Math.min(HW, STATS_CHUNK));
  if (N * Math.ceil(HW / CS) > MAX_LOOP) CS = Math.ceil(HW / Math.floor(MAX_LOOP / N));
  const CE = Math.max(1, Math.min(HW, EW_CHUNK));
  return { N, C, H, W, CS, KP: Math.ceil(HW / CS), CE, KE: Math.ceil(HW / CE) };
}

/** A 1-D (C) tensor's values as float64 (cpu). */
const values1 = (t: Tensor) =>
  Float64Array.from({ length: t.shape[0] }, (_, i) => t.storage.data![t.offset + i * t.strides[0]]);

/** Uniforms [invocations, x offset, x strides, (dy offset, dy strides)]. */
const stridedUniforms = (n: number, ...ts: Tensor[]) => {
  const u = new Uniforms().u32(n);
  for (const t of ts) u.u32(t.offset, ...t.strides);
  return u.build();
};

/**
 * Batch normalisation of x (N, C, H, W) per channel, as PyTorch's `batch_norm`: in training (the default)
 * y = (x - mean) / sqrt(var + eps) weight + bias with the batch's mean and biased variance over (N, H, W),
 * and, when given, runningMean and runningVar move in place towards the batch's mean and unbiased variance
 * by `momentum`; in evaluation (`training: false`) the running statistics normalise. Differentiable in x,
 * weight and bias on both backends. Bad input (ranks, sizes, devices, dtypes, a single value per channel in
 * training, evaluation without running statistics) throws a {@link ConvError}.
 *
 * @example
 * ```ts
 * import { batchNorm2d, ones, tensor, zeros } from "seqlab";
 * const x = tensor([1, 2, 3, 4, 10, 10, 10, 10], { shape: [2, 1, 2, 2] });
 * const runningMean = zeros([1]), runningVar = ones([1]);
 * const y = batchNorm2d(x, { runningMean, runningVar }); // mean 6.25, biased variance 14.6875
 * console.log(Array.from(await y.toArray(), (v) => v.toFixed(3)).join(" ")); // -1.370 -1.109 -0.848 -0.587 0.978 0.978 0.978 0.978
 * console.log(await runningMean.toArray(), await runningVar.toArray()); // [0.625] [2.5786] (0.9 + 0.1 x 117.5 / 7)
 * ```
 */
export function batchNorm2d(x: Tensor, opts: BatchNorm2dOptions = {}): Tensor {
  const op = "batchNorm2d";
  checkImage(op, x);
  const [N, C, H, W] = x.shape, M = N * H * W;
  const training = opts.training ?? true, momentum = opts.momentum ?? 0.1, eps = opts.eps ?? 1e-5;
  const weight = opts.weight ?? null, bias = opts.bias ?? null;
  const rm = opts.runningMean ?? null, rv = opts.runningVar ?? null;
  for (
    const [name, t] of [["weight", weight], ["bias", bias], ["runningMean", rm], ["runningVar", rv]] as const
  ) {
    if (!t) continue;
    t.check(op);
    if (t.rank !== 1 || t.shape[0] !== C) {
      throw new ConvError(
        `${op}: ${name} must be (${C}), one per channel of x ${fmt(x.shape)}, got ${t.describe()}`,
      );
    }
    if (t.device !== x.device || t.dtype !== x.dtype) {
      throw new ConvError(`${op}: ${name} ${t.describe()} must have x's device and dtype (${x.describe()})`);
    }
  }
  if (!rm !== !rv) {
    throw new ConvError(`${op}: runningMean and runningVar come together, got only one of them`);
  }
  if (!training && !rm) {
    throw new ConvError(
      `${op}: evaluation (training: false) normalises by runningMean and runningVar; none given`,
    );
  }
  if (!(momentum >= 0 && momentum <= 1)) {
    throw new ConvError(`${op}: momentum must be in [0, 1], got ${momentum}`);
  }
  if (!(eps >= 0 && Number.isFinite(eps))) {
    throw new ConvError(`${op}: eps must be finite and >= 0, got ${eps}`);
  }
  if (training && M <= 1) {
    throw new ConvError(
      `${op}: training needs more than one value per channel, got x ${fmt(x.shape)} (N H W = ${M})`,
    );
  }
  const needX = x.requiresGrad, needW = !!weight?.requiresGrad, needB = !!bias?.requiresGrad;
  const grads = isGradEnabled() && (needX || needW || needB);
  const inputs = [x, ...(weight ? [weight] : []), ...(bias ? [bias] : [])];
  const pick = (dx: Tensor | null, dw: Tensor | null, db: Tensor | null) => [
    dx,
    ...(weight ? [dw] : []),
    ...(bias ? [db] : []),
  ];

  if (x.device === "cpu") {
    const stats = training
      ? batchNormStatsRef(strided4(x), x.shape)
      : { mean: values1(rm!), variance: values1(rv!) };
    const wv = weight ? values1(weight) : null, bv = bias ? values1(bias) : null;
    const y = empty(op, [N, C, H, W], x.dtype, "cpu");
    y.storage.data!.set(batchNorm2dRef(strided4(x), x.shape, stats.mean, stats.variance, wv, bv, eps));
    if (training && rm && rv) {
      const s1 = (t: Tensor) => ({ data: t.storage.data!, off: t.offset, s: t.strides[0] });
      runningUpdateRef(s1(rm), s1(rv), stats.mean, stats.variance, M, momentum);
    }
    if (!grads) return y;
    return record(op, y, inputs, [x], (gy, [xs]) => {
      const r = batchNorm2dBackwardRef(
        strided4(xs),
        xs.shape,
        strided4(gy),
        stats.mean,
        stats.variance,
        wv,
        eps,
        training,
      );
      const full = (d: Float64Array, shape: number[]) => {
        const t = empty(`${op} backward`, shape, xs.dtype, "cpu");
        t.storage.data!.set(d);
        return t;
      };
      return pick(
        needX ? full(r.dx, [N, C, H, W]) : null,
        needW ? full(r.dweight, [C]) : null,
        needB ? full(r.dbias, [C]) : null,
      );
    });
  }

  const g = bnGeometry(x.shape), key = `${x.dtype}|${bnKey(g)}`, ctx = gpu();
  const y = empty(op, [N, C, H, W], x.dtype, "webgpu");
  if (y.size === 0) return y;
  const stats = empty(op, [C, 4], "f32", "webgpu");
  const part = training ? empty(op, [C, g.N * g.KP, 3], "f32", "webgpu") : null;
  try {
    if (part) {
      const n = C * g.N * g.KP;
      ctx.run({
        name: op,
        key: `stats v1|${key}`,
        source: () => bnStatsSource(x.dtype, g),
        inputs: [x.storage.buffer!],
        outputs: [part.storage.buffer!],
        uniforms: stridedUniforms(n, x),
        workgroups: grid(n, BN_WG),
      });
    }
    const running = !!rm;
    const one = (t: Tensor | null) => (t ? [t.offset, t.strides[0]] : [0, 0]);
    const params = [...(weight ? [weight] : []), ...(bias ? [bias] : [])];
    ctx.run({
      name: op,
      key: `finish v1|${key}|${training}|${!!weight}|${!!bias}|${running}`,
      source: () => bnFinishSource(x.dtype, g, training, !!weight, !!bias, running),
      inputs: [...(part ? [part] : []), ...params, ...(training ? [] : [rm!, rv!])].map((t) =>
        t.storage.buffer!
      ),
      outputs: [...(training && running ? [rm!, rv!] : []), stats].map((t) => t.storage.buffer!),
      uniforms: new Uniforms().u32(C, ...one(weight), ...one(bias), ...one(rm), ...one(rv)).f32(eps, momentum)
        .build(),
      workgroups: grid(C, BN_WG),
    });
    const n = N * C * g.KE;
    ctx.run({
      name: op,
      key: `normalize v1|${key}`,
      source: () => bnNormalizeSource(x.dtype, g),
      inputs: [x.storage.buffer!, stats.storage.buffer!],
      outputs: [y.storage.buffer!],
      uniforms: stridedUniforms(n, x),
      workgroups: grid(n, BN_WG),
    });
  } catch (e) {
    y.dispose();
    stats.dispose();
    throw e;
  } finally {
    part?.dispose(); // freed while queued: the pool reuses it only after the submit
  }
  if (!grads) {
    stats.dispose();
    return y;
  }
  const out = record(op, y, inputs, [x, stats], (gy, [xs, st]) => {
    const [dx, dw, db] = backwardGpu(xs, gy, st, g, training, { x: needX, w: needW, b: needB });
    return pick(dx, dw, db);
  });
  stats.dispose(); // the graph keeps its own handle
  return out;
}

/** The backward's three passes on webgpu, from the forward's STATS table. */
function backwardGpu(
  x: Tensor,
  gy: Tensor,
  stats: Tensor,
  g: BnGeometry,
  training: boolean,
  need: { x: boolean; w: boolean; b: boolean },
): [Tensor | null, Tensor | null, Tensor | null] {
  const name = "batchNorm2d backward", ctx = gpu(), key = `${x.dtype}|${bnKey(g)}`;
  const { N, C } = g;
  const part = empty(name, [C, N * g.KP, 2], "f32", "webgpu");
  const coef = empty(name, [C, 3], "f32", "webgpu");
  const dw = need.w ? empty(name, [C], x.dtype, "webgpu") : null;
  const db = need.b ? empty(name, [C], x.dtype, "webgpu") : null;
  const dx = need.x ? empty(name, x.shape, x.dtype, "webgpu") : null;
  try {
    const ns = C * N * g.KP;
    ctx.run({
      name,
      key: `bwd sums v1|${key}`,
      source: () => bnBackwardSumsSource(x.dtype, g),
      inputs: [x, gy, stats].map((t) => t.storage.buffer!),
      outputs: [part.storage.buffer!],
      uniforms: stridedUniforms(ns, x, gy),
      workgroups: grid(ns, BN_WG),
    });
    ctx.run({
      name,
      key: `bwd finish v1|${key}|${training}|${need.w}|${need.b}`,
      source: () => bnBackwardFinishSource(x.dtype, g, training, need.w, need.b),
      inputs: [part, stats].map((t) => t.storage.buffer!),
      outputs: [coef, ...(dw ? [dw] : []), ...(db ? [db] : [])].map((t) => t.storage.buffer!),
      uniforms: new Uniforms().u32(C).build(),
      workgroups: grid(C, BN_WG),
    });
    if (dx) {
      const n = N * C * g.KE;
      ctx.run({
        name,
        key: `bwd dx v1|${key}`,
        source: () => bnBackwardDxSource(x.dtype, g),
        inputs: [x, gy, stats, coef].map((t) => t.storage.buffer!),
        outputs: [dx.storage.buffer!],
        uniforms: stridedUniforms(n, x, gy),
        workgroups: grid(n, BN_WG),
      });
    }
  } catch (e) {
    dx?.dispose();
    dw?.dispose();
    db?.dispose();
    throw e;
  } finally {
    part.dispose();
    coef.dispose();
  }
  return [dx, dw, db];
}
