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

import type { DType } from "../runtime/dtype.ts";
import type { DeviceName } from "../runtime/device.ts";
import { noGrad } from "../runtime/autograd.ts";
import { keep, type Tensor, tidy } from "../runtime/tensor.ts";
import { gpu } from "../runtime/device.ts";
import { fmt } from "../runtime/shape.ts";
import { full } from "../ops/core/creation.ts";
import { add, copyInto, div, minimum, mul, sqrt, sub } from "../ops/core/elementwise.ts";
import { concat } from "../ops/core/layout.ts";
import { fusedClip, type FusedRule, fusedStep, ruleSlots } from "../ops/core/optim.ts";
export type { AdamRule, FusedRule, SgdRule } from "../ops/core/optim.ts";
import { sum } from "../ops/core/reduce.ts";

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
  /**
   * Run the update as one fused kernel per group (default true; PyTorch's `fused`): it reads each
   * parameter, gradient and state element once and writes them in place, with no concatenation or
   * copy-back. false runs the rule composed from elementwise ops (the reference the fused kernel is
   * tested against). Optimisers without a fused form ignore it.
   */
  fused?: boolean;
}

/** What an update rule computes: the parameter's new value and its new state tensors (all fresh). */
export interface Update {
  /** The new parameter value (same shape). */
  param: Tensor;
  /** The new state tensors by slot name (e.g. "m", "v", "momentum"). */
  state: Record<string, Tensor>;
}

/**
 * Parameters that share a device and dtype: their state lives in one flat tensor per slot, the
 * parameters laid end to end (`offsets`, each a multiple of 4 so the fused kernel reads vec4s), so a step
 * updates the whole group at once.
 */
interface Group {
  readonly idx: number[];
  readonly offsets: number[];
  readonly total: number;
  readonly device: DeviceName;
  readonly dtype: DType;
  /** Flat state by slot, (total), kept out of tidy scopes. */
  readonly state: Map<string, Tensor>;
}

const STATE_KEY = /^(\d+)\.([A-Za-z_]\w*)$/;

/**
 * Base of the optimisers: parameters, step counts, learning rate and state. A subclass supplies one update
 * rule, and where it can a {@link FusedRule} for the fused kernel (`fusedStep` in ops/core/optim.ts),
 * which updates every parameter of a (device, dtype) group that has a gradient in a few dispatches, in
 * place, each with its own step count. Without it (or with `fused: false`) the base applies the rule
 * "multi-tensor" style: the group's parameters and gradients are concatenated into flat tensors, updated
 * by one chain of ops and written back in place, so a step costs about 3 dispatches per parameter plus
 * the rule's ops once; when only some parameters of a group have gradients (or their step counts
 * differ), those are updated one by one against slices of the flat state. Nothing reads back.
 */
export abstract class Optimizer {
  /** The parameters updated by {@link Optimizer.step}. */
  readonly params: Tensor[];
  /** Steps taken so far (the schedule's argument for the next step). */
  stepCount = 0;
  /** Updates applied to each parameter: its own step for bias corrections and state initialisation. */
  readonly paramSteps: number[];
  readonly #groups: Group[] = [];
  readonly #lr: Schedule;
  #views: Map<string, Tensor> | null = null;
  #disposed = false;
  /** Whether steps run the fused kernel where the subclass has a fused rule. */
  readonly fused: boolean;

  /** Takes the parameters (e.g. `model.parameters()`), the options and the optimiser's name. */
  constructor(params: Iterable<Tensor>, o: OptimizerOptions, readonly name: string) {
    this.params = [...params];
    if (new Set(this.params).size !== this.params.length) {
      throw new Error(`${name}: a parameter is listed twice`);
    }
    const byKey = new Map<string, Group>();
    for (const [i, p] of this.params.entries()) {
      p.check(name);
      if (!p.requiresGrad) throw new Error(`${name}: parameter ${i} (${p.describe()}) does not require grad`);
      const key = `${p.device}|${p.dtype}`;
      let g = byKey.get(key);
      if (!g) {
        g = { idx: [], offsets: [], total: 0, device: p.device, dtype: p.dtype, state: new Map() };
        byKey.set(key, g);
        this.#groups.push(g);
      }
      g.idx.push(i);
      g.offsets.push(g.total);
      (g as { total: number }).total += Math.ceil(p.size / 4) * 4;
    }
    if (typeof o.lr === "number") this.#lr = constantSchedule(o.lr);
    else if (typeof o.lr === "function") this.#lr = o.lr;
    else throw new Error(`${name}: lr must be a number or a schedule function, got ${typeof o.lr}`);
    this.paramSteps = this.params.map(() => 0);
    this.fused = o.fused ?? true;
  }

  /**
   * The rule as the fused kernel runs it, or null when the subclass has none (then the composed
   * {@link Optimizer.rule} runs). Must compute what `rule` computes.
   */
  protected fusedRule(): FusedRule | null {
    return null;
  }

  /** The learning rate the next step will use. */
  get lr(): number {
    return this.#lr(this.stepCount);
  }

  /**
   * The update rule for one parameter (or a flat group): new value and state from the current value `p`,
   * gradient `g`, state (null on the parameter's first step), its step `t` (1 on the first) and `lr`.
   * Runs under noGrad; returns fresh tensors and frees its own temporaries.
   */
  protected abstract rule(
    p: Tensor,
    g: Tensor,
    state: ReadonlyMap<string, Tensor> | null,
    t: number,
    lr: number,
  ): Update;

  /** One update of every parameter that has a gradient (others are skipped). No readback. */
  step(): void {
    if (this.#disposed) throw new Error(`${this.name}.step: the optimizer was disposed`);
    const lr = this.lr;
    checkPositive(`${this.name}.step`, `lr at step ${this.stepCount}`, lr, true);
    for (const p of this.params) p.check(`${this.name}.step`);
    this.stepCount++;
    this.#dropViews();
    noGrad(() => {
      for (const g of this.#groups) this.#stepGroup(g, lr);
    });
  }

  #stepGroup(group: Group, lr: number): void {
    const have = group.idx.filter((k) => this.params[k].grad);
    if (have.length === 0) return;
    for (const k of have) this.paramSteps[k]++;
    const rule = this.fused ? this.fusedRule() : null;
    if (rule && have.every((k) => this.params[k].isContiguous)) {
      const state = ruleSlots(rule).map((slot) => this.#flatState(group, slot));
      const items = have.map((k) => ({
        p: this.params[k],
        g: this.params[k].grad!,
        t: this.paramSteps[k],
        stateOffset: group.offsets[group.idx.indexOf(k)],
      }));
      fusedStep(`${this.name}.step`, rule, items, state, lr);
      return;
    }
    const t0 = this.paramSteps[have[0]];
    const temps: Tensor[] = [];
    const tmp = (x: Tensor) => (temps.push(x), x);
    try {
      if (have.length === group.idx.length && have.every((k) => this.paramSteps[k] === t0)) {
        // the group's layout: each parameter at its offset, zeros in the padding up to a multiple of 4
        const flat = (ts: Tensor[]) => {
          const rows: Tensor[] = [];
          ts.forEach((t, i) => {
            rows.push(tmp(t.reshape([-1])));
            const pad = (i + 1 < ts.length ? group.offsets[i + 1] : group.total) - group.offsets[i] - t.size;
            if (pad > 0) rows.push(tmp(full([pad], 0, { device: group.device, dtype: t.dtype })));
          });
          return rows.length === 1 ? rows[0] : tmp(concat(rows));
        };
        const p = flat(group.idx.map((k) => this.params[k]));
        const g = flat(group.idx.map((k) => this.params[k].grad!));
        const r = this.rule(p, g, t0 === 1 ? null : group.state, t0, lr);
        tmp(r.param);
        for (const [slot, v] of Object.entries(r.state)) {
          const old = group.state.get(slot);
          group.state.set(slot, keep(v));
          old?.dispose();
        }
        group.idx.forEach((k, i) => {
          const piece = tmp(r.param.slice([[group.offsets[i], group.offsets[i] + this.params[k].size]]));
          copyInto(this.params[k], tmp(piece.reshape(this.params[k].shape)));
        });
        return;
      }
      for (const k of have) {
        const i = group.idx.indexOf(k), p = this.params[k];
        const slice = (flat: Tensor) =>
          tmp(tmp(flat.slice([[group.offsets[i], group.offsets[i] + p.size]])).reshape(p.shape));
        const first = this.paramSteps[k] === 1;
        const views = first ? null : new Map([...group.state].map(([slot, flat]) => [slot, slice(flat)]));
        const r = this.rule(p, p.grad!, views, this.paramSteps[k], lr);
        tmp(r.param);
        for (const [slot, v] of Object.entries(r.state)) {
          tmp(v);
          copyInto(slice(this.#flatState(group, slot)), v);
        }
        copyInto(p, r.param);
      }
    } finally {
      for (const t of temps) t.dispose();
    }
  }

  /** A group's flat state slot, created as zeros when absent. */
  #flatState(group: Group, slot: string): Tensor {
    let s = group.state.get(slot);
    if (!s) {
      s = keep(full([group.total], 0, { device: group.device, dtype: group.dtype }));
      group.state.set(slot, s);
    }
    return s;
  }

  #dropViews(): void {
    if (this.#views) { for (const v of this.#views.values()) v.dispose(); }
    this.#views = null;
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
   * The state as `<param index>.<slot>` -> tensor, for checkpoints: views of the live state, valid until
   * the next step, `loadState` or `dispose` (the optimiser frees them).
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
    if (this.#views) return new Map(this.#views);
    const views = new Map<string, Tensor>();
    const groupOf = new Map<number, [Group, number]>();
    for (const g of this.#groups) g.idx.forEach((k, i) => groupOf.set(k, [g, i]));
    this.params.forEach((p, k) => {
      const [g, i] = groupOf.get(k)!;
      for (const [slot, flat] of g.state) {
        const piece = flat.slice([[g.offsets[i], g.offsets[i] + p.size]]);
        views.set(`${k}.${slot}`, keep(piece.reshape(p.shape)));
        piece.dispose();
      }
    });
    this.#views = views;
    return new Map(views);
  }

  /**
   * The slots the update rule keeps per parameter (Adam: m, v; SGD with momentum: momentum; plain SGD:
   * none), or null when the subclass has no fused rule to name them.
   *
   * @example
   * ```ts
   * import { Adam, param, SGD, tensor } from "seqlab";
   * const w = param(tensor([1, 2]));
   * console.log(new Adam([w], { lr: 0.1 }).stateSlots()); // ["m", "v"]
   * console.log(new SGD([w], { lr: 0.1 }).stateSlots()); // []
   * ```
   */
  stateSlots(): readonly string[] | null {
    const rule = this.fusedRule();
    return rule ? ruleSlots(rule) : null;
  }

  /**
   * The keys {@link Optimizer.stateTensors} lists once the parameters have taken `paramSteps` steps
   * (default: the current counts): every slot of every parameter whose (device, dtype) group has a
   * parameter that has taken a step (state is kept per group, so a parameter without a gradient yet has
   * zeros), in parameter order; null where {@link Optimizer.stateSlots} is. Checkpoint loading checks a
   * file's state against it.
   *
   * @example
   * ```ts
   * import { Adam, param, tensor } from "seqlab";
   * const opt = new Adam([param(tensor([1, 2])), param(tensor([3]))], { lr: 0.1 });
   * console.log(opt.stateKeys(), opt.stateKeys([1, 0])); // [] ["0.m", "0.v", "1.m", "1.v"]
   * ```
   */
  stateKeys(paramSteps: readonly number[] = this.paramSteps): string[] | null {
    const slots = this.stateSlots();
    if (!slots) return null;
    const stepped = new Set<number>();
    for (const [n, g] of this.#groups.entries()) {
      if (g.idx.some((k) => (paramSteps[k] ?? 0) > 0)) stepped.add(n);
    }
    const keys: string[] = [];
    this.params.forEach((_, k) => {
      if (!stepped.has(this.#groups.findIndex((g) => g.idx.includes(k)))) return;
      for (const slot of slots) keys.push(`${k}.${slot}`);
    });
    return keys;
  }

  /**
   * Replaces the state with copies of `tensors` (named as {@link Optimizer.stateTensors} names them), the
   * step count and the per-parameter step counts (default: all `stepCount`). Everything is validated
   * before anything changes.
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
  loadState(tensors: Map<string, Tensor>, stepCount: number, paramSteps?: readonly number[]): void {
    const op = `${this.name}.loadState`;
    if (!Number.isInteger(stepCount) || stepCount < 0) {
      throw new Error(`${op}: step count must be an integer >= 0, got ${stepCount}`);
    }
    if (
      paramSteps &&
      (paramSteps.length !== this.params.length || !paramSteps.every((n) => Number.isInteger(n) && n >= 0))
    ) {
      throw new Error(
        `${op}: parameter step counts must be ${this.params.length} integers >= 0, got ${
          JSON.stringify(paramSteps)
        }`,
      );
    }
    const plan: [number, string, Tensor][] = [];
    for (const [key, t] of tensors) {
      const m = STATE_KEY.exec(key);
      const k = m ? Number(m[1]) : -1;
      if (!m || k >= this.params.length) {
        throw new Error(
          `${op}: state "${key}" names no parameter (expected <index>.<slot>, ${this.params.length} parameters)`,
        );
      }
      const p = this.params[k];
      if (t.rank !== p.rank || t.shape.some((d, i) => d !== p.shape[i]) || t.dtype !== p.dtype) {
        throw new Error(
          `${op}: state "${key}" is ${fmt(t.shape)} ${t.dtype} but parameter ${k} is ${
            fmt(p.shape)
          } ${p.dtype}`,
        );
      }
      if (t.device !== p.device) throw new Error(`${op}: state "${key}" is on ${t.device}, not ${p.device}`);
      plan.push([k, m[2], t]);
    }
    this.#dropViews();
    for (const g of this.#groups) {
      for (const t of g.state.values()) t.dispose();
      g.state.clear();
    }
    noGrad(() => {
      for (const [k, slot, t] of plan) {
        const g = this.#groups.find((g) => g.idx.includes(k))!;
        const i = g.idx.indexOf(k);
        const piece = this.#flatState(g, slot).slice([[g.offsets[i], g.offsets[i] + t.size]]);
        const shaped = piece.reshape(t.shape);
        copyInto(shaped, t);
        piece.dispose();
        shaped.dispose();
      }
    });
    this.stepCount = stepCount;
    this.params.forEach((_, k) => (this.paramSteps[k] = paramSteps ? paramSteps[k] : stepCount));
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
    this.#dropViews();
    for (const g of this.#groups) {
      for (const t of g.state.values()) t.dispose();
      g.state.clear();
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

  /** The SGD rule for the fused kernel. */
  protected override fusedRule(): FusedRule {
    const { momentum, dampening, nesterov, weightDecay } = this;
    return { kind: "sgd", momentum, dampening, nesterov, weightDecay };
  }

  /** The SGD rule. */
  protected rule(
    p: Tensor,
    g0: Tensor,
    state: ReadonlyMap<string, Tensor> | null,
    _t: number,
    lr: number,
  ): Update {
    const temps: Tensor[] = [];
    const t = (x: Tensor) => (temps.push(x), x);
    try {
      let g = this.weightDecay ? t(add(g0, t(mul(p, this.weightDecay)))) : g0;
      const out: Record<string, Tensor> = {};
      if (this.momentum) {
        const prev = state?.get("momentum");
        // PyTorch starts the buffer at g itself (no dampening on the first step)
        const buf = prev ? add(t(mul(prev, this.momentum)), t(mul(g, 1 - this.dampening))) : mul(g, 1);
        out.momentum = buf;
        g = this.nesterov ? t(add(g, t(mul(buf, this.momentum)))) : buf;
      }
      return { param: sub(p, t(mul(g, lr))), state: out };
    } finally {
      for (const x of temps) x.dispose();
    }
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
 * v = β2 v + (1 - β2) g²; p -= (lr / (1 - β1^t)) m / (sqrt(v) / sqrt(1 - β2^t) + eps), with t the
 * parameter's own step count.
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

  /** The Adam/AdamW rule for the fused kernel. */
  protected override fusedRule(): FusedRule {
    const { beta1, beta2, eps, weightDecay } = this;
    return { kind: "adam", beta1, beta2, eps, weightDecay, decoupled: this.decoupled };
  }

  /** The Adam/AdamW rule. */
  protected rule(
    p: Tensor,
    g0: Tensor,
    state: ReadonlyMap<string, Tensor> | null,
    step: number,
    lr: number,
  ): Update {
    const temps: Tensor[] = [];
    const t = (x: Tensor) => (temps.push(x), x);
    try {
      const pv = this.weightDecay && this.decoupled ? t(mul(p, 1 - lr * this.weightDecay)) : p;
      const g = this.weightDecay && !this.decoupled ? t(add(g0, t(mul(p, this.weightDecay)))) : g0;
      const m0 = state?.get("m"), v0 = state?.get("v");
      const gm = mul(g, 1 - this.beta1), gg = mul(t(mul(g, g)), 1 - this.beta2);
      const m = m0 ? add(t(mul(m0, this.beta1)), t(gm)) : gm;
      const v = v0 ? add(t(mul(v0, this.beta2)), t(gg)) : gg;
      const bc1 = 1 - this.beta1 ** step, bc2 = 1 - this.beta2 ** step;
      const denom = t(t(mul(t(sqrt(v)), 1 / Math.sqrt(bc2))).add(this.eps));
      return { param: sub(pv, t(mul(t(div(m, denom)), lr / bc1))), state: { m, v } };
    } finally {
      for (const x of temps) x.dispose();
    }
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
 * are skipped; with none at all it throws. The gradients are replaced by scaled copies. On WebGPU
 * `fused` (default true) computes the norm and the copies with kernels that read several gradients per
 * dispatch (`fusedClip`); false concatenates every gradient and multiplies each (the reference).
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
export function clipGradNorm(
  params: Iterable<Tensor>,
  maxNorm: number,
  o: { fused?: boolean } = {},
): Tensor {
  checkPositive("clipGradNorm", "maxNorm", maxNorm);
  const withGrad = [...params].filter((p) => p.grad);
  return noGrad(() => {
    if (withGrad.length === 0) throw new Error("clipGradNorm: no parameter has a gradient");
    const devices = new Set(withGrad.map((p) => p.grad!.device));
    if (devices.size > 1) throw new Error(`clipGradNorm: gradients on several devices (${[...devices]})`);
    const temps: Tensor[] = [];
    const t = (x: Tensor) => (temps.push(x), x);
    if (devices.has("webgpu") && (o.fused ?? true)) {
      const r = fusedClip("clipGradNorm", withGrad.map((p) => p.grad!), maxNorm);
      withGrad.forEach((p, k) => {
        p.grad!.dispose();
        p.grad = keep(r.grads[k]);
      });
      return r.norm;
    }
    // one concatenation, one sum of squares (in f32 at least)
    const rows = withGrad.map((p) => {
      const r = t(p.grad!.reshape([-1]));
      return r.dtype === "f16" ? t(r.cast("f32")) : r;
    });
    const all = rows.length === 1 ? rows[0] : t(concat(rows));
    const norm = sqrt(t(sum(t(mul(all, all)))));
    const scale = t(minimum(t(div(maxNorm, t(norm.add(1e-6)))), 1));
    for (const p of withGrad) {
      // a new tensor, not an in-place write: a gradient may be a broadcast view or share storage with
      // another parameter's gradient (the backward engine hands out views of one tensor)
      const g = p.grad!;
      p.grad = keep(mul(g, g.dtype === scale.dtype ? scale : t(scale.cast(g.dtype))));
      g.dispose();
    }
    for (const x of temps) x.dispose();
    return norm;
  });
}

/**
 * One training step that reads its loss without waiting idle: zeroes the gradients, computes `loss()`
 * (a one-element tensor), starts reading it back at once, then runs backward and `opt.step()` and submits
 * them, and resolves to the loss value. Everything runs inside a tidy scope; the loss tensor is freed.
 *
 * The same numbers as the plain step (`zeroGrad`, loss, `backward`, `step`, then `await loss.item()`),
 * in less time on WebGPU: the loss is final once the forward pass has run, so its readback (which on Deno
 * resolves about 10 ms after the work it waits for) overlaps the recording and execution of the backward
 * pass and the update instead of following them. `deno task bench train` measures both.
 *
 * @example
 * ```ts
 * import { Adam, crossEntropy, Linear, tensor, trainStep } from "seqlab";
 * const net = new Linear(2, 2, { seed: 1 });
 * const opt = new Adam(net.parameters(), { lr: 0.1 });
 * const x = tensor([[0, 1], [1, 0]]), y = tensor([1, 0], { dtype: "i32" });
 * const first = await trainStep(opt, () => crossEntropy(net.forward(x), y));
 * let last = first;
 * for (let i = 0; i < 20; i++) last = await trainStep(opt, () => crossEntropy(net.forward(x), y));
 * console.log(last < first); // true
 * ```
 */
export async function trainStep(opt: Optimizer, loss: () => Tensor): Promise<number> {
  let value: Promise<number> | null = null;
  let l: Tensor | null = null;
  try {
    l = tidy(() => {
      opt.zeroGrad();
      const t = loss();
      if (t.size !== 1) throw new Error(`trainStep: the loss must have one element, got ${t.describe()}`);
      value = t.item(); // submits the forward pass and starts the readback
      t.backward();
      opt.step();
      return t;
    });
    if (l.device === "webgpu") gpu().flush(); // the backward pass and the update run while it lands
    return await value!;
  } finally {
    // a failed step still waits for its readback, so no rejection goes unhandled
    if (value && !l) await (value as Promise<number>).catch(() => {});
    l?.dispose();
  }
}
