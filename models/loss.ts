/**
 * Losses: {@link crossEntropy} from logits with an ignore index and label smoothing (fused kernels), and,
 * built from differentiable core ops, {@link mse} and the {@link accuracy} metric.
 * @module
 */

import { isFloat } from "../runtime/dtype.ts";
import type { Tensor } from "../runtime/tensor.ts";
import { arange } from "../ops/core/creation.ts";
import { cast, div, eq, maximum, mul, ne, sub, where } from "../ops/core/elementwise.ts";
import { argmax, mean, sum } from "../ops/core/reduce.ts";
import { logSumExp } from "../ops/core/rowwise.ts";
import {
  checkCrossEntropy,
  checkReduction,
  checkTargets,
  crossEntropyFits,
  type CrossEntropyOptions,
  type Reduction,
  softmaxCrossEntropy,
} from "../ops/core/cross_entropy.ts";

export type { CrossEntropyOptions, Reduction };

/**
 * Cross-entropy of `logits` (..., C) against integer class `targets` (...), i32 or u32:
 * loss = logSumExp(logits) - logits[target], with label smoothing
 * (1 - ε) (lse - logits[target]) + ε (lse - mean(logits)). The mean is over targets that are not
 * `ignoreIndex`; when every target is ignored the loss is 0 (PyTorch gives NaN), so a batch of padding does
 * not poison training. Fused (ops/core/cross_entropy.ts): one kernel for the rows' losses, one for the
 * reduction, one for the gradient (softmax - smoothed one-hot) g / count. Rows longer than one shader
 * invocation's loop (C > MAX_LOOP) are composed from core ops ({@link crossEntropyComposed}). Targets on
 * the cpu device are range-checked here; on webgpu a target outside [0, C) that is not ignoreIndex throws
 * at the next readback.
 *
 * @example
 * ```ts
 * import { crossEntropy, tensor } from "seqlab";
 * const logits = tensor([[2, 0, 0], [0, 0, 0]]);
 * const targets = tensor([0, -100], { dtype: "i32" }); // the second row is ignored
 * console.log(await crossEntropy(logits, targets).item()); // 0.2395... = log(e^2 + 2) - 2
 * ```
 */
export function crossEntropy(logits: Tensor, targets: Tensor, o: CrossEntropyOptions = {}): Tensor {
  const args = checkCrossEntropy(logits, targets, o);
  if (crossEntropyFits(logits)) return softmaxCrossEntropy(logits, targets, args);
  checkTargets(targets, args.C, args.ignoreIndex);
  return crossEntropyComposed(logits, targets, o);
}

/**
 * crossEntropy composed from differentiable core ops (logSumExp, a one-hot mask `arange(C) == target`,
 * sums): the path for rows too long for the fused kernels, and the composition they are tested against.
 * Inputs are checked as in {@link crossEntropy}, but a webgpu target outside [0, C) acts as a target whose
 * logit is 0 (crossEntropy checks it in a shader first).
 *
 * @example
 * ```ts
 * import { crossEntropyComposed } from "./loss.ts";
 * import { tensor } from "seqlab";
 * const l = crossEntropyComposed(tensor([[2, 0, 0]]), tensor([0], { dtype: "i32" }));
 * console.log(await l.item()); // 0.2395...
 * ```
 */
export function crossEntropyComposed(logits: Tensor, targets: Tensor, o: CrossEntropyOptions = {}): Tensor {
  const { ignoreIndex, eps, reduction, C } = checkCrossEntropy(logits, targets, o);
  const temps: Tensor[] = [];
  const t = <T extends Tensor>(x: T): T => (temps.push(x), x);
  try {
    // u32 targets are compared as i32 (an index never exceeds 2^31), so a negative ignoreIndex works
    const tgt = targets.dtype === "i32" ? targets : t(cast(targets, "i32"));
    const classes = t(arange(C, { dtype: "i32", device: logits.device })); // (C)
    const onehot = t(eq(classes, t(tgt.unsqueeze(-1)))); // (..., C) u32
    const lse = t(logSumExp(logits, -1)); // (...)
    const picked = t(sum(t(where(onehot, logits, 0)), -1)); // (...)
    let loss = t(sub(lse, picked)); // (...) negative log-likelihood
    if (eps > 0) {
      const smooth = t(sub(lse, t(mean(logits, -1)))); // -(1/C) sum_c log p_c
      loss = t(t(mul(loss, 1 - eps)).add(t(mul(smooth, eps))));
    }
    const valid = t(ne(tgt, ignoreIndex)); // (...) u32
    const masked = where(valid, loss, 0); // where, not mul: an ignored row's inf/NaN logits stay out
    if (reduction === "none") return masked;
    t(masked);
    const total = sum(masked);
    if (reduction === "sum") return total;
    t(total);
    const count = t(sum(t(cast(valid, logits.dtype))));
    return div(total, t(maximum(count, 1)));
  } finally {
    for (const x of temps) x.dispose();
  }
}

/**
 * Mean squared error: mean((pred - target)^2) (or "sum" / "none"), with broadcasting.
 *
 * @example
 * ```ts
 * import { mse, tensor } from "seqlab";
 * console.log(await mse(tensor([1, 2, 3]), tensor([1, 2, 5])).item()); // 1.3333...
 * ```
 */
export function mse(pred: Tensor, target: Tensor, o: { reduction?: Reduction } = {}): Tensor {
  const reduction = checkReduction("mse", o.reduction ?? "mean");
  if (!isFloat(pred.dtype)) throw new Error(`mse: pred must be a float tensor, got ${pred.describe()}`);
  const d = sub(pred, target);
  const sq = mul(d, d);
  d.dispose();
  if (reduction === "none") return sq;
  const r = reduction === "sum" ? sum(sq) : mean(sq);
  sq.dispose();
  return r;
}

/**
 * Fraction of rows whose argmax over the last dim equals the target (a 0-d f32 tensor; no gradient).
 * Targets equal to `ignoreIndex` are left out.
 *
 * @example
 * ```ts
 * import { accuracy, tensor } from "seqlab";
 * const logits = tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]]);
 * console.log(await accuracy(logits, tensor([1, 0, 0], { dtype: "i32" })).item()); // 0.666...
 * ```
 */
export function accuracy(logits: Tensor, targets: Tensor, o: { ignoreIndex?: number } = {}): Tensor {
  const ignoreIndex = o.ignoreIndex ?? -100;
  const pred = argmax(logits, -1); // (...) i32
  const tgt = targets.dtype === "i32" ? targets : cast(targets, "i32");
  const hit = eq(pred, tgt);
  const valid = ne(tgt, ignoreIndex);
  const both = mul(hit, valid);
  const num = sum(both), den = sum(valid);
  const numF = cast(num, "f32"), denF = cast(den, "f32");
  const den1 = maximum(denF, 1);
  const r = div(numF, den1);
  for (const x of [pred, hit, valid, both, num, den, numF, denF, den1]) x.dispose();
  if (tgt !== targets) tgt.dispose();
  return r;
}
