/**
 * Optimisers ({@link SGD} with momentum and Nesterov, {@link Adam}, {@link AdamW}), gradient clipping by
 * global norm ({@link clipGradNorm}) and learning-rate schedules ({@link constantSchedule},
 * {@link warmupSchedule}, {@link cosineSchedule}).
 *
 * A step runs on the parameters' device with no readback (nothing waits for the GPU), writes the new
 * values into the parameters in place (the model keeps its tensors) and keeps its state tensors out of
 * tidy scopes; `opt.dispose()` frees them. Learning rates and bias corrections are host numbers, so a
 * schedule costs nothing on the device.
 *
 * @example
 * ```ts
 * import { Adam, crossEntropy, Linear, randn, tensor, tidy } from "seqlab";
 * const model = new Linear(4, 3, { seed: 1 });
 * const opt = new Adam(model.parameters(), { lr: 1e-2 });
 * const x = randn([8, 4], { seed: 2 }), y = tensor([0, 1, 2, 0, 1, 2, 0, 1], { dtype: "i32" });
 * for (let i = 0; i < 5; i++) {
 *   tidy(() => {
 *     opt.zeroGrad();
 *     crossEntropy(model.forward(x), y).backward();
 *     opt.step();
 *   });
 * }
 * console.log(opt.stepCount); // 5
 * opt.dispose();
 * model.dispose();
 * ```
 * @module
 */

import { noGrad } from "../runtime/autograd.ts";
import { keep, type Tensor } from "../runtime/tensor.ts";
import { fmt } from "../runtime/shape.ts";
import { add, copyInto, div, minimum, mul, sqrt, sub } from "../ops/core/elementwise.ts";
import { sum } from "../ops/core/reduce.ts";
import "../ops/core/mod.ts"; // fills the Tensor method table

// ---------------------------------------------------------------------------------------------------------
// schedules

/** A learning-rate schedule: the rate for step `t` (0 for the first step). */
export type Schedule = (t: number) => number;

function checkPositive(op: string, name: string, v: number, allowZero = false): void {
  if (!Number.isFinite(v) || v < 0 || (!allowZero && v === 0)) {
    throw new Error(`${op}: ${name} must be a ${allowZero ? "non-negative" : "positive"} number, got ${v}`);
  }
}

/**
 * The same rate at every step.
 *
 * @example
 * ```ts
 * import { constantSchedule } from "seqlab";
 * console.log(constantSchedule(0.1)(1000)); // 0.1
 * ```
 */
export function constantSchedule(lr: number): Schedule {
  checkPositive("constantSchedule", "lr", lr, true);
  return () => lr;
}

/**
 * Linear warmup from lr / warmup to lr over the first `warmup` steps, then constant.
 *
 * @example
 * ```ts
 * import { warmupSchedule } from "seqlab";
 * const s = warmupSchedule(1, 4);
 * console.log([0, 1, 2, 3, 4, 100].map(s)); // [0.25, 0.5, 0.75, 1, 1, 1]
 * ```
 */
export function warmupSchedule(lr: number, warmup: number): Schedule {
  checkPositive("warmupSchedule", "lr", lr, true);
  if (!Number.isInteger(warmup) || warmup < 0) {
    throw new Error(`warmupSchedule: warmup must be an integer >= 0, got ${warmup}`);
  }
  return (t) => (t < warmup ? (lr * (t + 1)) / warmup : lr);
}

/**
 * Linear warmup over `warmup` steps (default 0), then cosine decay from lr to `minLr` (default 0) at step
 * `total`, and `minLr` after that.
 *
 * @example
 * ```ts
 * import { cosineSchedule } from "seqlab";
 * const s = cosineSchedule(1, 10, { warmup: 2 });
 * console.log(s(0), s(1), s(2), s(6), s(10)); // 0.5 1 1 0.5 0
 * ```
 */
export function cosineSchedule(
  lr: number,
  total: number,
  o: { warmup?: number; minLr?: number } = {},
): Schedule {
  const warmup = o.warmup ?? 0, minLr = o.minLr ?? 0;
  checkPositive("cosineSchedule", "lr", lr, true);
  checkPositive("cosineSchedule", "minLr", minLr, true);
  if (!Number.isInteger(total) || !Number.isInteger(warmup) || warmup < 0 || total <= warmup) {
    throw new Error(
      `cosineSchedule: need integers 0 <= warmup < total, got warmup ${warmup}, total ${total}`,
    );
  }
  return (t) => {
    if (t < warmup) return (lr * (t + 1)) / warmup;
    if (t >= total) return minLr;
    const progress = (t - warmup) / (total - warmup);
    return minLr + 0.5 * (lr - minLr) * (1 + Math.cos(Math.PI * progress));
  };
}

// ---------------------------------------------------------------------------------------------------------
// optimisers

/** Options every optimiser takes. */
export interface OptimizerOptions {
  /** A learning rate or a {@link Schedule} of the step count. */
  lr: number | Schedule;
  /** Weight decay (SGD and Adam: L2 added to the gradient; AdamW: decoupled). Default 0 (AdamW 0.01). */
  weightDecay?: number;
}

/**
 * Base of the optimisers: the parameter list, the step count, the learning rate and the state tensors.
 * Subclasses implement `update(p, g, k)` for parameter k; it runs under `noGrad` and must not read back.
 */
export abstract class Optimizer {
  /** The parameters updated by {@link Optimizer.step}. */
  readonly params: Tensor[];
  /** Steps taken so far (the schedule's argument for the next step). */
  stepCount = 0;
  /** Per-parameter state tensors by slot name (e.g. "m", "v", "momentum"), kept out of tidy scopes. */
  protected state: Map<string, Tensor>[];
  readonly #lr: Schedule;
  #disposed = false;

  /** Takes the parameters (e.g. `model.parameters()`) and the options. */
  constructor(params: Iterable<Tensor>, o: OptimizerOptions, readonly name: string) {
    this.params = [...params];
    if (new Set(this.params).size !== this.params.length) {
      throw new Error(`${name}: a parameter is listed twice`);
    }
    for (const [i, p] of this.params.entries()) {
      p.check(name);
      if (!p.requiresGrad) throw new Error(`${name}: parameter ${i} (${p.describe()}) does not require grad`);
    }
    if (typeof o.lr === "number") this.#lr = constantSchedule(o.lr);
    else if (typeof o.lr === "function") this.#lr = o.lr;
    else throw new Error(`${name}: lr must be a number or a schedule function, got ${typeof o.lr}`);
    this.state = this.params.map(() => new Map());
  }

  /** The learning rate the next step will use. */
  get lr(): number {
    return this.#lr(this.stepCount);
  }

  /** One update of every parameter that has a gradient (others are skipped). No readback. */
  step(): void {
    if (this.#disposed) throw new Error(`${this.name}.step: the optimizer was disposed`);
    const lr = this.lr;
    checkPositive(`${this.name}.step`, `lr at step ${this.stepCount}`, lr, true);
    this.stepCount++;
    noGrad(() => {
      this.params.forEach((p, k) => {
        if (!p.grad) return;
        p.check(`${this.name}.step`);
        this.update(p, p.grad, k, lr);
      });
    });
  }

  /** The new value of parameter `k` (written in place by the caller); state updates go through `setState`. */
  protected abstract update(p: Tensor, g: Tensor, k: number, lr: number): void;

  /** Writes `value` into parameter `p` in place and frees `value`. */
  protected assign(p: Tensor, value: Tensor): void {
    copyInto(p, value);
    value.dispose();
  }

  /** Replaces a state slot (the old tensor is freed, the new one kept out of tidy). */
  protected setState(k: number, slot: string, t: Tensor): Tensor {
    const m = this.state[k];
    const old = m.get(slot);
    m.set(slot, keep(t));
    if (old && old !== t) old.dispose();
    return t;
  }

  /**
   * Clears every parameter's gradient.
   *
   * @example
   * ```ts
   * import { param, SGD, tensor } from "seqlab";
   * const w = param(tensor([1, 2]));
   * const opt = new SGD([w], { lr: 0.1 });
   * w.mul(w).sum().backward();
   * opt.zeroGrad();
   * console.log(w.grad); // null
   * ```
   */
  zeroGrad(): void {
    for (const p of this.params) p.zeroGrad();
  }

  /**
   * The state tensors as `<param index>.<slot>` -> tensor (for checkpoints). Views of the live state.
   *
   * @example
   * ```ts
   * import { Adam, param, tensor } from "seqlab";
   * const w = param(tensor([1, 2]));
   * const opt = new Adam([w], { lr: 0.1 });
   * w.mul(w).sum().backward();
   * opt.step();
   * console.log([...opt.stateTensors().keys()]); // ["0.m", "0.v"]
   * ```
   */
  stateTensors(): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    this.state.forEach((m, k) => {
      for (const [slot, t] of m) out.set(`${k}.${slot}`, t);
    });
    return out;
  }

  /**
   * Replaces the state with copies of `tensors` (named as {@link Optimizer.stateTensors} names them) and
   * sets the step count. Everything is validated before anything changes.
   *
   * @example
   * ```ts
   * import { Adam, param, tensor } from "seqlab";
   * const w = param(tensor([1, 2]));
   * const a = new Adam([w], { lr: 0.1 }), b = new Adam([w], { lr: 0.1 });
   * w.mul(w).sum().backward();
   * a.step();
   * b.loadState(a.stateTensors(), a.stepCount);
   * console.log(b.stepCount, [...b.stateTensors().keys()]); // 1 ["0.m", "0.v"]
   * ```
   */
  loadState(tensors: Map<string, Tensor>, stepCount: number): void {
    if (!Number.isInteger(stepCount) || stepCount < 0) {
      throw new Error(`${this.name}.loadState: step count must be an integer >= 0, got ${stepCount}`);
    }
    const plan: [number, string, Tensor][] = [];
    for (const [key, t] of tensors) {
      const m = /^(\d+)\.([A-Za-z_]\w*)$/.exec(key);
      const k = m ? Number(m[1]) : -1;
      if (!m || k >= this.params.length) {
        throw new Error(
          `${this.name}.loadState: state "${key}" names no parameter (expected <index>.<slot>, ` +
            `${this.params.length} parameters)`,
        );
      }
      const p = this.params[k];
      if (t.rank !== p.rank || t.shape.some((d, i) => d !== p.shape[i]) || t.dtype !== p.dtype) {
        throw new Error(
          `${this.name}.loadState: state "${key}" is ${fmt(t.shape)} ${t.dtype} but parameter ${k} is ` +
            `${fmt(p.shape)} ${p.dtype}`,
        );
      }
      plan.push([k, m[2], t]);
    }
    for (const m of this.state) {
      for (const t of m.values()) t.dispose();
      m.clear();
    }
    noGrad(() => {
      for (const [k, slot, t] of plan) {
        const c = t.device === this.params[k].device ? t.contiguous() : null;
        if (!c) {
          throw new Error(
            `${this.name}.loadState: state ${k}.${slot} is on ${t.device}, not ${this.params[k].device}`,
          );
        }
        this.setState(k, slot, c);
      }
    });
    this.stepCount = stepCount;
  }

  /**
   * Frees the state tensors (the parameters belong to the model).
   *
   * @example
   * ```ts
   * import { param, SGD, tensor } from "seqlab";
   * const opt = new SGD([param(tensor([1]))], { lr: 0.1, momentum: 0.9 });
   * opt.dispose();
   * ```
   */
  dispose(): void {
    for (const m of this.state) {
      for (const t of m.values()) t.dispose();
      m.clear();
    }
    this.#disposed = true;
  }
}

/** Options of {@link SGD}. */
export interface SGDOptions extends OptimizerOptions {
  /** Momentum factor (default 0: plain SGD). */
  momentum?: number;
  /** Dampening of the gradient added to the momentum buffer (default 0). */
  dampening?: number;
  /** Nesterov momentum (needs momentum > 0 and dampening 0). */
  nesterov?: boolean;
}

/**
 * Stochastic gradient descent, PyTorch's formulation: g += wd p; buf = μ buf + (1 - dampening) g
 * (buf = g on the first step); g = g + μ buf (Nesterov) or buf; p -= lr g.
 *
 * @example
 * ```ts
 * import { param, SGD, tensor } from "seqlab";
 * const w = param(tensor([1, 2]));
 * const opt = new SGD([w], { lr: 0.1 });
 * w.mul(w).sum().backward(); // grad 2w
 * opt.step();
 * console.log(await w.toArray()); // [0.8, 1.6]
 * ```
 */
export class SGD extends Optimizer {
  /** Momentum factor μ (0: plain SGD). */
  readonly momentum: number;
  /** Dampening of the gradient added to the momentum buffer. */
  readonly dampening: number;
  /** Nesterov momentum. */
  readonly nesterov: boolean;
  /** L2 weight decay added to the gradient. */
  readonly weightDecay: number;
  /** Takes the parameters and options. */
  constructor(params: Iterable<Tensor>, o: SGDOptions) {
    super(params, o, "SGD");
    this.momentum = o.momentum ?? 0;
    this.dampening = o.dampening ?? 0;
    this.nesterov = o.nesterov ?? false;
    this.weightDecay = o.weightDecay ?? 0;
    checkPositive("SGD", "momentum", this.momentum, true);
    checkPositive("SGD", "weightDecay", this.weightDecay, true);
    if (this.nesterov && (this.momentum <= 0 || this.dampening !== 0)) {
      throw new Error(`SGD: nesterov needs momentum > 0 and dampening 0 (momentum ${this.momentum})`);
    }
  }

  /** The SGD update of parameter `k`. */
  protected update(p: Tensor, g0: Tensor, k: number, lr: number): void {
    const temps: Tensor[] = [];
    const t = (x: Tensor) => (temps.push(x), x);
    let g = this.weightDecay ? t(add(g0, t(mul(p, this.weightDecay)))) : g0;
    if (this.momentum) {
      const prev = this.state[k].get("momentum");
      // PyTorch starts the buffer at g itself (no dampening on the first step)
      const next = prev ? add(t(mul(prev, this.momentum)), t(mul(g, 1 - this.dampening))) : mul(g, 1);
      const buf = this.setState(k, "momentum", next);
      g = this.nesterov ? t(add(g, t(mul(buf, this.momentum)))) : buf;
    }
    this.assign(p, sub(p, t(mul(g, lr))));
    for (const x of temps) x.dispose();
  }
}

/** Options of {@link Adam} and {@link AdamW}. */
export interface AdamOptions extends OptimizerOptions {
  /** Decay rates of the first and second moments (default [0.9, 0.999]). */
  betas?: [number, number];
  /** Added to the denominator (default 1e-8). */
  eps?: number;
}

/**
 * Adam (Kingma and Ba, 2015), PyTorch's formulation: g += wd p (L2, coupled); m = β1 m + (1 - β1) g;
 * v = β2 v + (1 - β2) g²; p -= (lr / (1 - β1^t)) m / (sqrt(v) / sqrt(1 - β2^t) + eps).
 *
 * @example
 * ```ts
 * import { Adam, param, tensor } from "seqlab";
 * const w = param(tensor([1, -1]));
 * const opt = new Adam([w], { lr: 0.1 });
 * w.mul(w).sum().backward();
 * opt.step(); // the first Adam step moves each weight by about lr against its gradient's sign
 * console.log(await w.toArray()); // [0.9, -0.9]
 * ```
 */
export class Adam extends Optimizer {
  /** Decay rate of the first moment. */
  readonly beta1: number;
  /** Decay rate of the second moment. */
  readonly beta2: number;
  /** Added to the denominator. */
  readonly eps: number;
  /** Weight decay: L2 (Adam) or decoupled (AdamW). */
  readonly weightDecay: number;
  /** Decoupled weight decay (AdamW) instead of L2. */
  protected decoupled = false;
  /** Takes the parameters and options. */
  constructor(params: Iterable<Tensor>, o: AdamOptions, name = "Adam") {
    super(params, o, name);
    [this.beta1, this.beta2] = o.betas ?? [0.9, 0.999];
    this.eps = o.eps ?? 1e-8;
    this.weightDecay = o.weightDecay ?? (name === "AdamW" ? 0.01 : 0);
    for (const [n, b] of [["beta1", this.beta1], ["beta2", this.beta2]] as const) {
      if (!(b >= 0 && b < 1)) throw new Error(`${name}: ${n} must be in [0, 1), got ${b}`);
    }
    checkPositive(name, "eps", this.eps, true);
    checkPositive(name, "weightDecay", this.weightDecay, true);
  }

  /** The Adam/AdamW update of parameter `k`. */
  protected update(p: Tensor, g0: Tensor, k: number, lr: number): void {
    const temps: Tensor[] = [];
    const t = (x: Tensor) => (temps.push(x), x);
    const step = this.stepCount; // already incremented: 1 on the first step
    let pv = p;
    if (this.weightDecay && this.decoupled) pv = t(mul(p, 1 - lr * this.weightDecay));
    const g = this.weightDecay && !this.decoupled ? t(add(g0, t(mul(p, this.weightDecay)))) : g0;
    const m0 = this.state[k].get("m"), v0 = this.state[k].get("v");
    const gm = mul(g, 1 - this.beta1), gg = mul(t(mul(g, g)), 1 - this.beta2);
    const m = this.setState(k, "m", m0 ? add(t(mul(m0, this.beta1)), t(gm)) : gm);
    const v = this.setState(k, "v", v0 ? add(t(mul(v0, this.beta2)), t(gg)) : gg);
    const bc1 = 1 - this.beta1 ** step, bc2 = 1 - this.beta2 ** step;
    const denom = t(t(mul(t(sqrt(v)), 1 / Math.sqrt(bc2))).add(this.eps));
    this.assign(p, sub(pv, t(mul(t(div(m, denom)), lr / bc1))));
    for (const x of temps) x.dispose();
  }
}

/**
 * AdamW (Loshchilov and Hutter, 2019): Adam with decoupled weight decay, p *= 1 - lr wd before the Adam
 * update (default wd 0.01, as PyTorch).
 *
 * @example
 * ```ts
 * import { AdamW, param, tensor } from "seqlab";
 * const w = param(tensor([1, -1]));
 * const opt = new AdamW([w], { lr: 0.1, weightDecay: 0.1 });
 * w.mul(w).sum().backward();
 * opt.step();
 * console.log(await w.toArray()); // [0.89, -0.89]: 1 * (1 - 0.01) - 0.1
 * ```
 */
export class AdamW extends Adam {
  /** Takes the parameters and options. */
  constructor(params: Iterable<Tensor>, o: AdamOptions) {
    super(params, o, "AdamW");
    this.decoupled = true;
  }
}

/**
 * Scales every gradient by min(1, maxNorm / (norm + 1e-6)) where norm is the global L2 norm over all
 * `params`' gradients; returns that norm (before clipping) as a 0-d f32 tensor on the gradients' device,
 * so nothing reads back (read it with `await norm.item()` when logging). Parameters without a gradient
 * are skipped; with none at all it throws. The gradients are replaced by scaled copies.
 *
 * @example
 * ```ts
 * import { clipGradNorm, param, tensor } from "seqlab";
 * const w = param(tensor([3, 4]));
 * w.mul(1).sum().backward(); // grad [1, 1]
 * w.grad!.dispose();
 * w.grad = tensor([3, 4]); // norm 5
 * const norm = clipGradNorm([w], 1);
 * console.log(await norm.item(), await w.grad!.toArray()); // 5 [0.6, 0.8] (within 1e-6)
 * ```
 */
export function clipGradNorm(params: Iterable<Tensor>, maxNorm: number): Tensor {
  checkPositive("clipGradNorm", "maxNorm", maxNorm);
  const withGrad = [...params].filter((p) => p.grad);
  return noGrad(() => {
    if (withGrad.length === 0) throw new Error("clipGradNorm: no parameter has a gradient");
    const temps: Tensor[] = [];
    const t = (x: Tensor) => (temps.push(x), x);
    let total: Tensor | null = null;
    for (const p of withGrad) {
      const g = p.grad!;
      const g32 = g.dtype === "f32" ? g : t(g.cast("f32"));
      const s = t(sum(t(mul(g32, g32))));
      total = total ? t(add(total, s)) : s;
    }
    const norm = sqrt(total!);
    const scale = t(minimum(t(div(maxNorm, t(norm.add(1e-6)))), 1));
    for (const p of withGrad) {
      // a new tensor, not an in-place write: a gradient may be a broadcast view or share storage with
      // another parameter's gradient (the backward engine hands out views of one tensor)
      const g = p.grad!;
      p.grad = keep(mul(g, g.dtype === "f32" ? scale : t(scale.cast(g.dtype))));
      g.dispose();
    }
    for (const x of temps) x.dispose();
    return norm;
  });
}
