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
import {
  fusedStepSource,
  OPTIM_GLOBAL_WORDS,
  OPTIM_PER_INVOCATION,
  OPTIM_SLOT_WORDS,
  OPTIM_WG,
  type StepVariant,
} from "./optim_wgsl.ts";
import { Uniforms } from "./util.ts";

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

/** Slots per dispatch (each is 10 uniform words). */
const MAX_SLOTS = 32;
const UNIFORM_WORDS = OPTIM_GLOBAL_WORDS + MAX_SLOTS * OPTIM_SLOT_WORDS;
/** The most elements (or vec4s) one slot covers: 65535 workgroups along x. */
const SLOT_SPAN = 65535 * OPTIM_WG * OPTIM_PER_INVOCATION;

interface Slot {
  n: number;
  p: GPUBuffer;
  g: GPUBuffer;
  pOff: number;
  gOff: number;
  sOff: number;
  first: boolean;
  c: [number, number, number];
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
  const ctx = gpu();
  const dtype = items[0].p.dtype;
  // vec4 slots for the 4-aligned part of a parameter (f32 only), scalar slots for the rest
  const vecSlots: Slot[] = [], scalarSlots: Slot[] = [];
  const push = (list: Slot[], s: Slot, w: number) => {
    for (let a = 0; a < s.n; a += SLOT_SPAN) {
      const n = Math.min(SLOT_SPAN, s.n - a);
      list.push({ ...s, n, pOff: s.pOff / w + a, gOff: s.gOff / w + a, sOff: s.sOff / w + a });
    }
  };
  items.forEach(({ p, t, stateOffset }, k) => {
    const g = grads[k];
    const base: Slot = {
      n: p.size,
      p: p.storage.buffer!,
      g: g.storage.buffer!,
      pOff: p.offset,
      gOff: g.offset,
      sOff: stateOffset,
      first: t === 1,
      c: coefficients(rule, lr, t),
    };
    const aligned = dtype === "f32" && p.offset % 4 === 0 && g.offset % 4 === 0 && stateOffset % 4 === 0;
    const body = aligned ? p.size - (p.size % 4) : 0;
    if (body > 0) push(vecSlots, { ...base, n: body / 4 }, 4);
    if (body < p.size) {
      const r = body;
      push(scalarSlots, {
        ...base,
        n: p.size - r,
        pOff: base.pOff + r,
        gOff: base.gOff + r,
        sOff: base.sOff + r,
      }, 1);
    }
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
  const globals = rule.kind === "adam"
    ? [rule.beta1, 1 - rule.beta1, rule.beta2, 1 - rule.beta2, rule.eps, rule.weightDecay]
    : [rule.momentum, 1 - rule.dampening, rule.weightDecay];
  // the uniform block is a storage binding on some adapters: keep one binding for it, and the state's
  const maxBufs = Math.max(2, (ctx.limits.maxStorageBuffersPerShaderStage ?? 8) - 1 - state.length);
  const stateBufs = state.map((s) => ({ buffer: s.storage.buffer!, access: "read_write" as const }));
  for (const [list, vec4] of [[vecSlots, true], [scalarSlots, false]] as const) {
    let i = 0;
    while (i < list.length) {
      // take slots while their distinct buffers fit the binding limit
      const bufs = new Map<GPUBuffer, boolean>(); // buffer -> written
      const batch: Slot[] = [];
      for (; i < list.length && batch.length < MAX_SLOTS; i++) {
        const s = list[i];
        const extra = (bufs.has(s.p) ? 0 : 1) + (bufs.has(s.g) || s.g === s.p ? 0 : 1);
        if (bufs.size + extra > maxBufs) break;
        bufs.set(s.p, true);
        if (!bufs.has(s.g)) bufs.set(s.g, false);
        batch.push(s);
      }
      const written = [...bufs].filter(([, w]) => w).map(([b]) => b);
      const read = [...bufs].filter(([, w]) => !w).map(([b]) => b);
      const order = [...written, ...read];
      const index = new Map(order.map((b, k) => [b, k]));
      // a fixed-size uniform block (MAX_SLOTS slots): one pipeline serves any number of slots
      const u = new Uniforms().f32(...globals).padTo(OPTIM_GLOBAL_WORDS);
      let span = 0;
      for (const s of batch) {
        u.u32(s.n, index.get(s.p)!, index.get(s.g)!, s.pOff, s.gOff, s.sOff, s.first ? 1 : 0).f32(...s.c);
        span = Math.max(span, Math.ceil(s.n / (OPTIM_WG * OPTIM_PER_INVOCATION)));
      }
      const nw = written.length, nr = read.length, ns = batch.length;
      ctx.run({
        name: op,
        key: `fusedStep|${JSON.stringify(variant)}|${dtype}|${vec4}|${nw}|${nr}`,
        source: () => fusedStepSource(variant, dtype, vec4, nw, nr, MAX_SLOTS),
        bindings: [
          ...written.map((buffer) => ({ buffer, access: "read_write" as const })),
          ...read.map((buffer) => ({ buffer, access: "read" as const })),
          ...stateBufs,
        ],
        uniforms: u.padTo(UNIFORM_WORDS).build(),
        workgroups: [span, ns, 1],
      });
    }
  }
}
