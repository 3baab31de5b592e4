/**
 * The fused optimizer step: SGD (momentum, dampening, Nesterov, L2) and Adam/AdamW updates of many
 * parameters at once, in place, from their gradients and flat state tensors. The optimisers in
 * models/optim.ts run it; their composed rule (a chain of elementwise ops) is its reference in tests.
 * @module
 */

import { isFloat } from "../../runtime/dtype.ts";
import { gpu } from "../../runtime/device.ts";
import { fmt } from "../../runtime/shape.ts";
import type { Tensor } from "../../runtime/tensor.ts";
import { cast, contiguous } from "./elementwise.ts";
import { type FusedRule, fusedStepRef, ruleSlots } from "./optim_ref.ts";
import { MAX_LOOP } from "../../runtime/webgpu.ts";
import {
  fusedStepSource,
  NORM_WG,
  normScaleSource,
  OPTIM_GLOBAL_WORDS,
  OPTIM_PER_INVOCATION,
  OPTIM_SLOT_WORDS,
  OPTIM_WG,
  scaleCopySource,
  type StepVariant,
  sumSquaresSource,
} from "./optim_wgsl.ts";
import { empty, Uniforms } from "./util.ts";

export type { AdamRule, FusedRule, SgdRule } from "./optim_ref.ts";
export { ruleSlots } from "./optim_ref.ts";

/** One parameter's share of a fused step. */
export interface StepItem {
  /** The parameter (contiguous), updated in place. */
  p: Tensor;
  /** Its gradient (same shape; any layout and float dtype). */
  g: Tensor;
  /** The parameter's step: 1 on its first update (its state is read as zeros). */
  t: number;
  /** Where its elements start in each flat state tensor. */
  stateOffset: number;
}

/** Slots per dispatch (each is OPTIM_SLOT_WORDS uniform words). */
const MAX_SLOTS = 32;
const UNIFORM_WORDS = OPTIM_GLOBAL_WORDS + MAX_SLOTS * OPTIM_SLOT_WORDS;
/** Workgroups per dispatch (along x). */
const MAX_GROUPS = 65535;
/** The most elements (or vec4s) one slot covers. */
const SLOT_SPAN = MAX_GROUPS * OPTIM_WG * OPTIM_PER_INVOCATION;

/**
 * A range of n elements (vec4s) of one tensor in a multi-tensor dispatch: the tuple of buffers it reads
 * and writes (the same positions in every slot of a kernel) and its uniform words after [n, tuple].
 */
interface Slot {
  n: number;
  bufs: GPUBuffer[];
  words: (u: Uniforms) => void;
}

/**
 * Splits `size` elements at `offsets` (element offsets into each bound buffer) into slots: the part
 * divisible by 4 as vec4 slots when `vec4` is allowed and every offset is a multiple of 4, the rest as
 * scalar slots, each at most SLOT_SPAN long. `make(n, w, start)` builds a slot of n units of w elements
 * starting `start` elements into the tensor.
 */
function split(
  size: number,
  offsets: number[],
  vec4: boolean,
  make: (n: number, w: number, start: number) => Slot,
  out: { vec: Slot[]; scalar: Slot[] },
): void {
  const body = vec4 && offsets.every((o) => o % 4 === 0) ? size - (size % 4) : 0;
  for (let a = 0; a < body / 4; a += SLOT_SPAN) {
    out.vec.push(make(Math.min(SLOT_SPAN, body / 4 - a), 4, 4 * a));
  }
  for (let a = body; a < size; a += SLOT_SPAN) out.scalar.push(make(Math.min(SLOT_SPAN, size - a), 1, a));
}

/** One dispatch of slots: its buffer tuples, workgroups and the slots' uniform words. */
interface Batch {
  tuples: GPUBuffer[][];
  /** Workgroups: every slot's, end to end. */
  groups: number;
  rows: number;
  words: Uint32Array;
}

/**
 * Packs the slots into as few dispatches as the binding limit allows (`reserved` bindings besides the
 * tuples and the uniform block, which some adapters bind as storage), MAX_SLOTS slots and 65535
 * workgroups each. Slots with the same buffers share a tuple; a buffer written at a `writable` position
 * appears in no other tuple of its dispatch (WebGPU forbids aliasing a writable binding).
 */
function batches(slots: readonly Slot[], writable: readonly boolean[], reserved: number): Batch[] {
  const maxBufs = Math.max(
    writable.length,
    (gpu().limits.maxStorageBuffersPerShaderStage ?? 8) - 1 - reserved,
  );
  const maxTuples = Math.floor(maxBufs / writable.length);
  const groupsOf = (s: Slot) => Math.ceil(s.n / (OPTIM_WG * OPTIM_PER_INVOCATION));
  const out: Batch[] = [];
  let i = 0;
  while (i < slots.length) {
    const tuples: GPUBuffer[][] = [], tupleOf: number[] = [];
    const written = new Set<GPUBuffer>(), bound = new Set<GPUBuffer>();
    let groups = 0;
    for (; i < slots.length && tupleOf.length < MAX_SLOTS; i++) {
      const bufs = slots[i].bufs;
      if (tupleOf.length > 0 && groups + groupsOf(slots[i]) > MAX_GROUPS) break;
      let t = tuples.findIndex((tu) => tu.every((b, j) => b === bufs[j]));
      if (t < 0) {
        const w = bufs.filter((_, j) => writable[j]), r = bufs.filter((_, j) => !writable[j]);
        const clash = w.some((b) => bound.has(b)) || r.some((b) => written.has(b)) ||
          new Set(w).size < w.length || w.some((b) => r.includes(b));
        if (tupleOf.length > 0 && (tuples.length >= maxTuples || clash)) break;
        t = tuples.push(bufs) - 1;
        for (const b of w) written.add(b);
        for (const b of bufs) bound.add(b);
      }
      tupleOf.push(t);
      groups += groupsOf(slots[i]);
    }
    const u = new Uniforms();
    let first = 0;
    tupleOf.forEach((t, k) => {
      const s = slots[i - tupleOf.length + k], at = u.length;
      s.words(u.u32(s.n, t));
      u.padTo(at + OPTIM_SLOT_WORDS - 1).u32(first);
      first += groupsOf(s);
    });
    out.push({ tuples, groups, rows: tupleOf.length, words: u.build() });
  }
  return out;
}

/** The bindings of a batch's tuples: position by position, tuple by tuple (b{j}_{t} in the shaders). */
function tupleBindings(b: Batch, writable: readonly boolean[]) {
  return writable.flatMap((w, j) =>
    b.tuples.map((tu) => ({ buffer: tu[j], access: w ? "read_write" as const : "read" as const }))
  );
}

/** A batch's uniform block: the globals, the slot count, then its slots, padded to MAX_SLOTS. */
function uniformsOf(globals: Uniforms, b: Batch): Uint32Array {
  return new Uniforms().u32(...globals.build()).padTo(OPTIM_GLOBAL_WORDS - 1).u32(b.rows).u32(...b.words)
    .padTo(UNIFORM_WORDS).build();
}

/**
 * Applies `rule` with learning rate `lr` to every item: p, and the item's range of each flat state tensor
 * (`ruleSlots(rule)` names them: Adam [m, v], SGD with momentum [buf]), are updated in place. Every
 * parameter and state tensor shares one device and float dtype. On the cpu the float64 reference runs; on
 * WebGPU one dispatch covers the slots of up to MAX_SLOTS parameters (or as many as the adapter's storage
 * bindings allow). `op` names the caller in errors and in the profile (e.g. "AdamW.step"). No readback.
 *
 * @example
 * ```ts
 * import { fusedStep } from "./optim.ts";
 * import { param, tensor, zeros } from "seqlab";
 * const w = param(tensor([1, -1])), m = zeros([2]), v = zeros([2]);
 * const rule = { kind: "adam", beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, decoupled: true } as const;
 * fusedStep("Adam.step", rule, [{ p: w, g: tensor([2, -2]), t: 1, stateOffset: 0 }], [m, v], 0.1);
 * console.log(await w.toArray()); // about [0.9, -0.9]
 * ```
 */
export function fusedStep(
  op: string,
  rule: FusedRule,
  items: readonly StepItem[],
  state: readonly Tensor[],
  lr: number,
): void {
  const slots = ruleSlots(rule);
  if (state.length !== slots.length) {
    throw new Error(`${op}: the rule keeps ${slots.length} state tensors (${slots}), got ${state.length}`);
  }
  if (items.length === 0) return;
  const { device, dtype } = items[0].p;
  for (const s of state) {
    s.check(op);
    if (s.device !== device || s.dtype !== dtype || !s.isContiguous || s.rank !== 1 || s.offset !== 0) {
      throw new Error(`${op}: state ${s.describe()} must be a whole flat ${dtype} tensor on ${device}`);
    }
  }
  for (const { p, g, t, stateOffset } of items) {
    p.check(op);
    g.check(op);
    if (p.device !== device || p.dtype !== dtype || !p.isContiguous || !isFloat(dtype)) {
      throw new Error(`${op}: parameter ${p.describe()} must be a contiguous ${dtype} tensor on ${device}`);
    }
    if (g.device !== device || g.size !== p.size || !isFloat(g.dtype)) {
      throw new Error(
        `${op}: gradient ${g.describe()} does not match parameter ${fmt(p.shape)} on ${device}`,
      );
    }
    if (!Number.isInteger(t) || t < 1) throw new Error(`${op}: step must be an integer >= 1, got ${t}`);
    if (!(stateOffset >= 0) || state.some((s) => stateOffset + p.size > s.size)) {
      throw new Error(`${op}: state range ${stateOffset} + ${p.size} is outside the state tensors`);
    }
  }
  const temps: Tensor[] = [];
  try {
    const grads = items.map(({ g }) => {
      if (g.isContiguous && g.dtype === dtype) return g;
      const c = g.dtype === dtype ? contiguous(g) : cast(g, dtype);
      temps.push(c);
      return c;
    });
    if (device === "cpu") {
      items.forEach(({ p, t, stateOffset }, k) => {
        const g = grads[k];
        const sd = state.map((s) => s.storage.data!);
        fusedStepRef(
          rule,
          lr,
          t,
          p.storage.data!,
          p.offset,
          g.storage.data!,
          g.offset,
          sd,
          stateOffset,
          p.size,
        );
      });
      return;
    }
    runFused(op, rule, items, grads, state, lr);
  } finally {
    for (const t of temps) t.dispose();
  }
}

/** The per-slot coefficients [c1, c2, c3] for step t (see fusedStepSource). */
function coefficients(rule: FusedRule, lr: number, t: number): [number, number, number] {
  if (rule.kind === "sgd") return [lr, 0, 0];
  return [lr / (1 - rule.beta1 ** t), 1 / Math.sqrt(1 - rule.beta2 ** t), 1 - lr * rule.weightDecay];
}

function runFused(
  op: string,
  rule: FusedRule,
  items: readonly StepItem[],
  grads: readonly Tensor[],
  state: readonly Tensor[],
  lr: number,
): void {
  const dtype = items[0].p.dtype;
  const slots = { vec: [] as Slot[], scalar: [] as Slot[] };
  items.forEach(({ p, t, stateOffset }, k) => {
    const g = grads[k], pb = p.storage.buffer!, gb = g.storage.buffer!;
    const c = coefficients(rule, lr, t);
    split(p.size, [p.offset, g.offset, stateOffset], dtype === "f32", (n, w, a) => ({
      n,
      bufs: [pb, gb],
      words: (u) =>
        u.u32((p.offset + a) / w, (g.offset + a) / w, (stateOffset + a) / w, t === 1 ? 1 : 0).f32(...c),
    }), slots);
  });
  const variant: StepVariant = rule.kind === "adam"
    ? {
      kind: "adam",
      l2: rule.weightDecay > 0 && !rule.decoupled,
      decay: rule.weightDecay > 0 && rule.decoupled,
      momentum: false,
      nesterov: false,
    }
    : {
      kind: "sgd",
      l2: rule.weightDecay > 0,
      decay: false,
      momentum: rule.momentum > 0,
      nesterov: rule.nesterov,
    };
  const globals = new Uniforms().f32(
    ...(rule.kind === "adam"
      ? [rule.beta1, 1 - rule.beta1, rule.beta2, 1 - rule.beta2, rule.eps, rule.weightDecay]
      : [rule.momentum, 1 - rule.dampening, rule.weightDecay]),
  );
  const stateBufs = state.map((s) => ({ buffer: s.storage.buffer!, access: "read_write" as const }));
  for (const [list, vec4] of [[slots.vec, true], [slots.scalar, false]] as const) {
    for (const b of batches(list, [true, false], state.length)) {
      const nt = b.tuples.length;
      gpu().run({
        name: op,
        key: `fusedStep|${JSON.stringify(variant)}|${dtype}|${vec4}|${nt}`,
        source: () => fusedStepSource(variant, dtype, vec4, nt, MAX_SLOTS),
        bindings: [...tupleBindings(b, [true, false]), ...stateBufs],
        uniforms: uniformsOf(globals, b),
        workgroups: [b.groups, 1, 1],
      });
    }
  }
}

/**
 * Contiguous views of `ts` in their own dtypes: each tensor itself when already contiguous, else a copy
 * pushed onto `temps`.
 */
function contiguousAll(ts: readonly Tensor[], temps: Tensor[]): Tensor[] {
  return ts.map((t) => {
    if (t.isContiguous) return t;
    const c = contiguous(t);
    temps.push(c);
    return c;
  });
}

/** Float tensors on WebGPU, for the gradient-norm kernels. */
function checkGrads(op: string, grads: readonly Tensor[]): void {
  for (const g of grads) {
    g.check(op);
    if (g.device !== "webgpu" || !isFloat(g.dtype)) {
      throw new Error(`${op}: the fused kernels take float tensors on webgpu, got ${g.describe()}`);
    }
  }
}

/**
 * clipGradNorm's fused path: the global L2 norm of `grads` (0-d f32) and new contiguous gradients scaled
 * by min(1, maxNorm / (norm + 1e-6)), in each gradient's dtype. One pass of per-invocation partial sums
 * of squares over the gradients in place (several per dispatch, as many as the bindings allow), one
 * workgroup summing them into the norm and the scale, then {@link fusedScaledCopies}. WebGPU only; the
 * composed clipGradNorm is its reference.
 *
 * @example
 * ```ts
 * import { fusedClip } from "./optim.ts";
 * import { tensor } from "seqlab";
 * const r = fusedClip("clip", [tensor([3, 0], { device: "webgpu" }), tensor([4], { device: "webgpu" })], 1);
 * console.log(await r.norm.item(), await r.grads[0].toArray()); // 5 [0.6, 0] (within 1e-6)
 * ```
 */
export function fusedClip(
  op: string,
  grads: readonly Tensor[],
  maxNorm: number,
): { norm: Tensor; grads: Tensor[] } {
  checkGrads(op, grads);
  const temps: Tensor[] = [];
  try {
    const cs = contiguousAll(grads, temps);
    const plans: { dtype: Tensor["dtype"]; vec4: boolean; b: Batch }[] = [];
    for (const dtype of new Set(cs.map((g) => g.dtype))) {
      const slots = { vec: [] as Slot[], scalar: [] as Slot[] };
      for (const g of cs.filter((g) => g.dtype === dtype && g.size > 0)) {
        const buf = g.storage.buffer!;
        split(g.size, [g.offset], dtype === "f32", (n, w, a) => ({
          n,
          bufs: [buf],
          words: (u) => u.u32((g.offset + a) / w),
        }), slots);
      }
      for (const [list, vec4] of [[slots.vec, true], [slots.scalar, false]] as const) {
        for (const b of batches(list, [false], 1)) plans.push({ dtype, vec4, b });
      }
    }
    const count = plans.reduce((a, { b }) => a + b.groups * OPTIM_WG, 0);
    if (count > NORM_WG * (MAX_LOOP / 2)) {
      throw new Error(`${op}: ${count} partial sums are past the one-workgroup norm pass; use fused: false`);
    }
    const partial = empty(op, [Math.max(count, 1)], "f32", "webgpu");
    temps.push(partial);
    const ctx = gpu();
    let base = 0;
    for (const { dtype, vec4, b } of plans) {
      const nt = b.tuples.length;
      ctx.run({
        name: op,
        key: `sumSquares|${dtype}|${vec4}|${nt}`,
        source: () => sumSquaresSource(dtype, vec4, nt, MAX_SLOTS),
        bindings: [...tupleBindings(b, [false]), { buffer: partial.storage.buffer!, access: "read_write" }],
        uniforms: uniformsOf(new Uniforms().u32(base), b),
        workgroups: [b.groups, 1, 1],
      });
      base += b.groups * OPTIM_WG;
    }
    const ns = empty(op, [2], "f32", "webgpu"); // [norm, scale]
    temps.push(ns);
    ctx.run({
      name: op,
      key: "normScale",
      source: normScaleSource,
      inputs: [partial.storage.buffer!],
      outputs: [ns.storage.buffer!],
      uniforms: new Uniforms().u32(count).f32(maxNorm).build(),
      workgroups: [1, 1, 1],
    });
    const scale = ns.slice([[1, 2]]);
    temps.push(scale);
    const scaled = fusedScaledCopies(op, grads, scale);
    return { norm: ns.slice([0]), grads: scaled };
  } finally {
    for (const t of temps) t.dispose();
  }
}

/**
 * New contiguous tensors g * scale for every gradient (scale a 0-d or 1-element f32 tensor on WebGPU),
 * several gradients per dispatch, in each gradient's dtype (f32 math).
 *
 * @example
 * ```ts
 * import { fusedScaledCopies } from "./optim.ts";
 * import { tensor } from "seqlab";
 * const [a] = fusedScaledCopies("scale", [tensor([1, 2], { device: "webgpu" })], tensor(0.5, { device: "webgpu" }));
 * console.log(await a.toArray()); // [0.5, 1]
 * ```
 */
export function fusedScaledCopies(op: string, grads: readonly Tensor[], scale: Tensor): Tensor[] {
  checkGrads(op, grads);
  scale.check(op);
  if (scale.device !== "webgpu" || scale.dtype !== "f32" || scale.size !== 1) {
    throw new Error(`${op}: scale must be one f32 value on webgpu, got ${scale.describe()}`);
  }
  const temps: Tensor[] = [];
  const outs = grads.map((g) => empty(op, g.shape, g.dtype, "webgpu"));
  try {
    const cs = contiguousAll(grads, temps);
    for (const dtype of new Set(cs.map((g) => g.dtype))) {
      const slots = { vec: [] as Slot[], scalar: [] as Slot[] };
      cs.forEach((g, k) => {
        if (g.dtype !== dtype || g.size === 0) return;
        const gb = g.storage.buffer!, ob = outs[k].storage.buffer!;
        split(g.size, [g.offset], dtype === "f32", (n, w, a) => ({
          n,
          bufs: [ob, gb],
          words: (u) => u.u32((g.offset + a) / w, a / w),
        }), slots);
      });
      for (const [list, vec4] of [[slots.vec, true], [slots.scalar, false]] as const) {
        for (const b of batches(list, [true, false], 1)) {
          const nt = b.tuples.length;
          gpu().run({
            name: op,
            key: `scaleCopy|${dtype}|${vec4}|${nt}`,
            source: () => scaleCopySource(dtype, vec4, nt, MAX_SLOTS),
            bindings: [...tupleBindings(b, [true, false]), { buffer: scale.storage.buffer!, access: "read" }],
            uniforms: uniformsOf(new Uniforms().u32(scale.offset), b),
            workgroups: [b.groups, 1, 1],
          });
        }
      }
    }
    return outs;
  } catch (e) {
    for (const t of outs) t.dispose();
    throw e;
  } finally {
    for (const t of temps) t.dispose();
  }
}
