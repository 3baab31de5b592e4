/**
 * Reference of the fused optimizer step: one parameter's SGD or Adam/AdamW update in float64, in place,
 * written as the rules in models/optim.ts compose it from elementwise ops (PyTorch's formulations).
 * @module
 */

import type { TypedArray } from "../../runtime/dtype.ts";

/** SGD with momentum, dampening, Nesterov and L2 weight decay (PyTorch's formulation). */
export interface SgdRule {
  /** Which rule. */
  kind: "sgd";
  /** Momentum factor μ (0: plain SGD, no state). */
  momentum: number;
  /** Dampening of the gradient added to the momentum buffer. */
  dampening: number;
  /** Nesterov momentum. */
  nesterov: boolean;
  /** L2 weight decay added to the gradient. */
  weightDecay: number;
}

/** Adam (L2 weight decay) or AdamW (decoupled weight decay). */
export interface AdamRule {
  /** Which rule. */
  kind: "adam";
  /** Decay rate of the first moment. */
  beta1: number;
  /** Decay rate of the second moment. */
  beta2: number;
  /** Added to the denominator. */
  eps: number;
  /** Weight decay: L2 (added to the gradient) or decoupled. */
  weightDecay: number;
  /** Decoupled weight decay (AdamW): p *= 1 - lr wd before the update. */
  decoupled: boolean;
}

/** An update rule the fused step runs. */
export type FusedRule = SgdRule | AdamRule;

/** The state slots a rule keeps per parameter element, in binding order. */
export function ruleSlots(rule: FusedRule): string[] {
  if (rule.kind === "adam") return ["m", "v"];
  return rule.momentum ? ["momentum"] : [];
}

/**
 * Updates p[pOff .. pOff + n) in place from g[gOff ..) and the state slots (`ruleSlots`: Adam [m, v], SGD
 * with momentum [buf]) at sOff, for the parameter's step `t` (1 on its first: the state is read as zeros,
 * and SGD's buffer starts at g) and learning rate `lr`. Float64 throughout, rounded once on store.
 *
 * SGD: g += wd p; buf = μ buf + (1 - dampening) g; g = g + μ buf (Nesterov) or buf; p -= lr g.
 * Adam: p *= 1 - lr wd (AdamW) or g += wd p (Adam); m = β1 m + (1 - β1) g; v = β2 v + (1 - β2) g²;
 * p -= (lr / (1 - β1^t)) m / (sqrt(v) / sqrt(1 - β2^t) + eps).
 */
export function fusedStepRef(
  rule: FusedRule,
  lr: number,
  t: number,
  p: TypedArray,
  pOff: number,
  g: TypedArray,
  gOff: number,
  state: TypedArray[],
  sOff: number,
  n: number,
): void {
  const first = t === 1;
  for (let i = 0; i < n; i++) {
    const pv = p[pOff + i];
    if (rule.kind === "sgd") {
      let gv = g[gOff + i] + (rule.weightDecay ? rule.weightDecay * pv : 0);
      if (rule.momentum) {
        const buf = first ? gv : rule.momentum * state[0][sOff + i] + (1 - rule.dampening) * gv;
        state[0][sOff + i] = buf;
        gv = rule.nesterov ? gv + rule.momentum * buf : buf;
      }
      p[pOff + i] = pv - lr * gv;
      continue;
    }
    const { beta1: b1, beta2: b2, eps, weightDecay: wd } = rule;
    const gv = g[gOff + i] + (wd && !rule.decoupled ? wd * pv : 0);
    const m = (first ? 0 : b1 * state[0][sOff + i]) + (1 - b1) * gv;
    const v = (first ? 0 : b2 * state[1][sOff + i]) + (1 - b2) * gv * gv;
    state[0][sOff + i] = m;
    state[1][sOff + i] = v;
    const decayed = wd && rule.decoupled ? pv * (1 - lr * wd) : pv;
    const denom = Math.sqrt(v) / Math.sqrt(1 - b2 ** t) + eps;
    p[pOff + i] = decayed - (lr / (1 - b1 ** t)) * (m / denom);
  }
}
