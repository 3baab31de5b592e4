/**
 * Softmax cross-entropy fused over rows: one forward kernel for every row's loss (saving the row's
 * log-sum-exp), one reduce kernel for "mean" or "sum", one backward kernel for the logits' gradient.
 * `crossEntropy` in models/loss.ts validates and dispatches here; the composition of core ops there is the
 * path for rows too long for one invocation.
 * @module
 */

import { isFloat } from "../../runtime/dtype.ts";
import { gpu } from "../../runtime/device.ts";
import { fmt } from "../../runtime/shape.ts";
import type { Tensor } from "../../runtime/tensor.ts";
import { grid, MAX_LOOP } from "../../runtime/webgpu.ts";
import { record } from "../../runtime/autograd.ts";
import { contiguous } from "./elementwise.ts";
import { crossEntropyBackwardRef, crossEntropyRef } from "./cross_entropy_ref.ts";
import {
  CE_REDUCE_WG,
  CE_TARGET_OOB,
  CE_WG,
  crossEntropyBackwardSource,
  crossEntropyCheckSource,
  crossEntropyReduceSource,
  crossEntropySource,
} from "./cross_entropy_wgsl.ts";
import { empty, Uniforms } from "./util.ts";

/** How a per-element loss is reduced. */
export type Reduction = "mean" | "sum" | "none";

/** Options of crossEntropy (models/loss.ts). */
export interface CrossEntropyOptions {
  /** Targets equal to this contribute nothing and are left out of the mean (default -100, as PyTorch). */
  ignoreIndex?: number;
  /**
   * ε in [0, 1]: the target distribution is (1 - ε) one-hot + ε uniform over the C classes (default 0).
   */
  labelSmoothing?: number;
  /** "mean" over non-ignored targets (default), "sum", or "none" (per target, 0 where ignored). */
  reduction?: Reduction;
}

/** Throws unless `r` is a reduction; returns it. */
export function checkReduction(op: string, r: unknown): Reduction {
  if (r === "mean" || r === "sum" || r === "none") return r;
  throw new Error(`${op}: reduction must be "mean", "sum" or "none", got ${JSON.stringify(r)}`);
}

/** The checked options of a cross-entropy call. */
export interface CrossEntropyArgs {
  /** Targets equal to this are left out. */
  ignoreIndex: number;
  /** The label smoothing ε. */
  eps: number;
  /** How the per-row losses are reduced. */
  reduction: Reduction;
  /** The number of classes (the logits' last dim). */
  C: number;
}

/**
 * Validates crossEntropy's inputs (the same checks and messages on both backends; targets on cpu are
 * range-checked here, on webgpu by the kernel's diagnostic) and returns the options with their defaults.
 *
 * @example
 * ```ts
 * import { checkCrossEntropy } from "./cross_entropy.ts";
 * import { tensor, zeros } from "seqlab";
 * console.log(checkCrossEntropy(zeros([2, 3]), tensor([0, 2], { dtype: "i32" })).C); // 3
 * ```
 */
export function checkCrossEntropy(
  logits: Tensor,
  targets: Tensor,
  o: CrossEntropyOptions = {},
): CrossEntropyArgs {
  logits.check("crossEntropy");
  targets.check("crossEntropy");
  const ignoreIndex = o.ignoreIndex ?? -100;
  const eps = o.labelSmoothing ?? 0;
  const reduction = checkReduction("crossEntropy", o.reduction ?? "mean");
  if (!isFloat(logits.dtype) || logits.rank === 0) {
    throw new Error(`crossEntropy: logits must be a float tensor (..., C), got ${logits.describe()}`);
  }
  if (isFloat(targets.dtype)) {
    throw new Error(`crossEntropy: targets must be i32 or u32 class indices, got ${targets.describe()}`);
  }
  const lead = logits.shape.slice(0, -1);
  if (targets.rank !== lead.length || targets.shape.some((d, i) => d !== lead[i])) {
    throw new Error(
      `crossEntropy: targets ${fmt(targets.shape)} must have the logits' shape without the class dim ` +
        `(${fmt(lead)}); logits are ${fmt(logits.shape)}`,
    );
  }
  if (logits.device !== targets.device) {
    throw new Error(`crossEntropy: logits on ${logits.device}, targets on ${targets.device}`);
  }
  if (!(eps >= 0 && eps <= 1)) throw new Error(`crossEntropy: labelSmoothing must be in [0, 1], got ${eps}`);
  if (!Number.isInteger(ignoreIndex)) {
    throw new Error(`crossEntropy: ignoreIndex ${ignoreIndex} is not an integer`);
  }
  const C = logits.shape[logits.rank - 1];
  if (targets.device === "cpu") {
    const c = targets.contiguous();
    const d = c.storage.data!;
    for (let i = c.offset; i < c.offset + c.size; i++) {
      if (d[i] !== ignoreIndex && !(d[i] >= 0 && d[i] < C)) {
        c.dispose();
        throw new Error(
          `crossEntropy: target ${d[i]} at flat index ${i - c.offset} is outside [0, ${C}) and is not ` +
            `ignoreIndex ${ignoreIndex}`,
        );
      }
    }
    c.dispose();
  }
  return { ignoreIndex, eps, reduction, C };
}

/** Whether the fused kernels take these logits (on webgpu: a row fits one invocation's loop). */
export function crossEntropyFits(logits: Tensor): boolean {
  if (logits.device === "cpu") return true;
  const C = logits.shape[logits.rank - 1], rows = logits.size / Math.max(C, 1);
  return C <= MAX_LOOP && rows <= CE_REDUCE_WG * MAX_LOOP;
}

/**
 * Registers the out-of-range message of a target dtype; returns its code. The shader reports the target and
 * C only, so the message does not name ignoreIndex (calls with different ones may share a batch).
 */
function targetDiagnostic(tType: "i32" | "u32"): number {
  return gpu().diagnostic(
    CE_TARGET_OOB[tType],
    (v, C) => `crossEntropy: target ${v} is outside [0, ${C}) and is not the ignoreIndex`,
    tType === "i32",
  );
}

/**
 * Checks webgpu targets against [0, C) in a shader (for the composed path): a target out of range that is
 * not `ignoreIndex` throws at the next readback, naming crossEntropy. Nothing to do on cpu, whose targets
 * {@link checkCrossEntropy} checked.
 *
 * @example
 * ```ts
 * import { checkTargets } from "./cross_entropy.ts";
 * import { tensor } from "seqlab";
 * checkTargets(tensor([0, 2], { dtype: "i32" }), 3, -100);
 * ```
 */
export function checkTargets(targets: Tensor, C: number, ignoreIndex: number): void {
  if (targets.device === "cpu" || targets.size === 0) return;
  const tType = targets.dtype as "i32" | "u32";
  const t = contiguous(targets);
  try {
    const ctx = gpu();
    targetDiagnostic(tType);
    ctx.run({
      name: "crossEntropy",
      key: `check|${tType}`,
      source: () => crossEntropyCheckSource(tType),
      inputs: [t.storage.buffer!],
      outputs: [ctx.diagnostics],
      uniforms: new Uniforms().u32(t.size, 0, C, 0, t.offset).i32(ignoreIndex).build(),
      workgroups: grid(t.size, CE_WG),
    });
  } finally {
    t.dispose();
  }
}

/**
 * The fused softmax cross-entropy of `logits` (..., C) against class indices `targets` (...), checked by
 * {@link checkCrossEntropy}: the "mean" (over targets that are not ignoreIndex; 0 when all are) or "sum"
 * loss, or the per-target losses ("none", 0 where ignored). Differentiable in the logits. On webgpu a
 * target outside [0, C) throws at the next readback.
 *
 * @example
 * ```ts
 * import { checkCrossEntropy, softmaxCrossEntropy } from "./cross_entropy.ts";
 * import { tensor } from "seqlab";
 * const logits = tensor([[2, 0, 0], [0, 0, 0]]), targets = tensor([0, -100], { dtype: "i32" });
 * const args = checkCrossEntropy(logits, targets);
 * console.log(await softmaxCrossEntropy(logits, targets, args).item()); // 0.2395... = log(e^2 + 2) - 2
 * ```
 */
export function softmaxCrossEntropy(logits: Tensor, targets: Tensor, a: CrossEntropyArgs): Tensor {
  const { ignoreIndex, eps, reduction, C } = a;
  const device = logits.device, dtype = logits.dtype, op = "crossEntropy";
  const tType = targets.dtype as "i32" | "u32";
  const lead = logits.shape.slice(0, -1), rows = targets.size;
  const x = contiguous(logits), t = contiguous(targets);
  const owned: Tensor[] = [];
  const own = <T extends Tensor>(v: T): T => (owned.push(v), v);
  try {
    // the saved statistics: f32 on webgpu, float64 on the cpu reference
    const stat = device === "cpu" ? "f64" : "f32";
    const lse = own(empty(op, [rows], stat, device));
    const count = own(empty(op, [1], stat, device));
    const out = own(empty(op, reduction === "none" ? lead : [], dtype, device));
    const v4 = C % 4 === 0 && x.offset % 4 === 0;
    const V = v4 ? 4 : 1;
    if (device === "cpu") {
      const loss = new Float64Array(rows);
      const n = crossEntropyRef(
        x.storage.data!,
        x.offset,
        rows,
        C,
        t.storage.data!,
        t.offset,
        ignoreIndex,
        eps,
        loss,
        lse.storage.data!,
      );
      count.storage.data![0] = n;
      if (reduction === "none") out.storage.data!.set(loss);
      else {
        const total = loss.reduce((s, v) => s + v, 0);
        out.storage.data![0] = reduction === "sum" ? total : total / Math.max(n, 1);
      }
    } else if (rows > 0) {
      const ctx = gpu();
      targetDiagnostic(tType);
      const loss = reduction === "none" ? out : own(empty(op, [rows], "f32", device));
      ctx.run({
        name: op,
        key: `fwd|${dtype}|${tType}|${loss.dtype}|${v4}`,
        source: () => crossEntropySource(dtype, tType, loss.dtype, v4),
        inputs: [x.storage.buffer!, t.storage.buffer!],
        outputs: [loss.storage.buffer!, lse.storage.buffer!, ctx.diagnostics],
        uniforms: new Uniforms().u32(rows, C / V, C, x.offset / V, t.offset).i32(ignoreIndex).f32(eps)
          .build(),
        workgroups: grid(rows, CE_WG),
      });
      if (reduction !== "none") {
        ctx.run({
          name: op,
          key: `reduce|${dtype}|${tType}`,
          source: () => crossEntropyReduceSource(dtype, tType),
          inputs: [loss.storage.buffer!, t.storage.buffer!],
          outputs: [out.storage.buffer!, count.storage.buffer!],
          uniforms: new Uniforms().u32(rows, reduction === "mean" ? 1 : 0, 0, 0, t.offset).i32(ignoreIndex)
            .build(),
          workgroups: [1, 1, 1],
        });
        loss.dispose();
      }
    } else if (reduction !== "none") {
      // no rows: the sum is 0, and so is the mean (nothing counted); written by a tiny fill on the host
      gpu().write(out.storage.buffer!, dtype === "f16" ? new Uint16Array(1) : new Float32Array(1));
      gpu().write(count.storage.buffer!, new Float32Array(1));
    }
    const mode = reduction === "none" ? 0 : reduction === "mean" ? 1 : 2;
    const result = record(op, out, [logits], [x, t, lse, count], (g, [xs, ts, ls, cs]) => [
      crossEntropyBackward(xs, ts, ls, cs, g, a, mode, v4),
    ]);
    lse.dispose();
    count.dispose();
    return result;
  } catch (e) {
    for (const v of owned) v.dispose();
    throw e;
  } finally {
    x.dispose();
    t.dispose();
  }
}

/** dlogits (rows..., C) from the saved logits, targets, lse and count; `mode` 0 none, 1 mean, 2 sum. */
function crossEntropyBackward(
  x: Tensor,
  t: Tensor,
  lse: Tensor,
  count: Tensor,
  gIn: Tensor,
  a: CrossEntropyArgs,
  mode: number,
  v4: boolean,
): Tensor {
  const { ignoreIndex, eps, C } = a;
  const op = "crossEntropy backward", rows = t.size, V = v4 ? 4 : 1;
  const dx = empty(op, x.shape, x.dtype, x.device);
  if (dx.size === 0) return dx;
  const g = contiguous(gIn);
  try {
    if (x.device === "cpu") {
      crossEntropyBackwardRef(
        x.storage.data!,
        x.offset,
        rows,
        C,
        t.storage.data!,
        t.offset,
        ignoreIndex,
        eps,
        lse.storage.data!,
        g.storage.data!,
        g.offset,
        mode === 0,
        mode === 1 ? Math.max(count.storage.data![0], 1) : 1,
        dx.storage.data!,
      );
      return dx;
    }
    const tType = t.dtype;
    gpu().run({
      name: op,
      key: `${x.dtype}|${tType}|${v4}`,
      source: () => crossEntropyBackwardSource(x.dtype, tType, v4),
      inputs: [x, t, lse, g, count].map((v) => v.storage.buffer!),
      outputs: [dx.storage.buffer!],
      uniforms: new Uniforms().u32(rows, C / V, C, x.offset / V, t.offset).i32(ignoreIndex).f32(eps)
        .u32(g.offset, mode).build(),
      workgroups: grid(rows, CE_WG),
    });
    return dx;
  } catch (e) {
    dx.dispose();
    throw e;
  } finally {
    g.dispose();
  }
}
