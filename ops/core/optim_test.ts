// The fused optimizer step: the WebGPU kernel against the float64 reference over several steps (odd
// sizes, vec4 bodies with scalar tails, gradient views, per-parameter step counts, more parameters than
// one dispatch binds), the reference against a hand computation, and bad input.
import { describe, expect, test } from "vitest";
import * as s from "../../mod.ts";
import type { Tensor } from "../../mod.ts";
import { gpu } from "../../runtime/device.ts";
import { assertClose, data, leakCheck, requireGpu, scoped } from "../../test/helpers.ts";
import { fusedClip, type FusedRule, fusedStep, ruleSlots } from "./optim.ts";
import { fusedStepRef } from "./optim_ref.ts";

leakCheck();

const RULES: [string, FusedRule][] = [
  ["SGD", { kind: "sgd", momentum: 0, dampening: 0, nesterov: false, weightDecay: 0 }],
  ["SGD momentum, dampening, L2", {
    kind: "sgd",
    momentum: 0.9,
    dampening: 0.1,
    nesterov: false,
    weightDecay: 0.01,
  }],
  ["SGD Nesterov", { kind: "sgd", momentum: 0.8, dampening: 0, nesterov: true, weightDecay: 0 }],
  ["Adam", { kind: "adam", beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, decoupled: false }],
  ["Adam L2", { kind: "adam", beta1: 0.8, beta2: 0.99, eps: 1e-3, weightDecay: 0.1, decoupled: false }],
  ["AdamW", { kind: "adam", beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.05, decoupled: true }],
];

/** Sizes with vec4 bodies, scalar tails, single elements, and one over several workgroups (64 x 4 vec4s). */
const SIZES = [1, 3, 4, 7, 64, 130, 4101];

/** Parameters, their flat state (offsets a multiple of 4) and the sizes' total. */
function layout(sizes: number[]): { offsets: number[]; total: number } {
  const offsets: number[] = [];
  let total = 0;
  for (const n of sizes) {
    offsets.push(total);
    total += Math.ceil(n / 4) * 4;
  }
  return { offsets, total };
}

/**
 * Runs `steps` fused steps on `device` with gradients made by `grad` (step, parameter index, size): every
 * parameter takes the steps in `active` (others skip, so step counts differ). Returns the parameters and
 * state as float64.
 */
async function trajectory(
  device: s.DeviceName,
  rule: FusedRule,
  sizes: number[],
  grad: (step: number, k: number, n: number, o: { device: s.DeviceName; dtype: s.DType }) => Tensor,
  active: (step: number, k: number) => boolean,
  steps = 4,
): Promise<Float64Array[]> {
  const dtype = device === "cpu" ? "f64" : "f32";
  const { offsets, total } = layout(sizes);
  const ps = sizes.map((n, k) => s.param(s.tensor(data(n, 10 + k), { device, dtype })));
  const state = ruleSlots(rule).map(() => s.zeros([total], { device, dtype }));
  const t = sizes.map(() => 0);
  for (let step = 0; step < steps; step++) {
    s.tidy(() => {
      const items = sizes.flatMap((n, k) => {
        if (!active(step, k)) return [];
        t[k]++;
        return [{ p: ps[k], g: grad(step, k, n, { device, dtype }), t: t[k], stateOffset: offsets[k] }];
      });
      fusedStep("test.step", rule, items, state, 0.05 * (step + 1));
    });
  }
  const out = [...ps, ...state].map(async (x) => Float64Array.from(await x.toArray()));
  const r = await Promise.all(out);
  for (const x of [...ps, ...state]) x.dispose();
  return r;
}

/** Gradients: fresh contiguous ones, a slice at an odd offset of a shared tensor, a broadcast view. */
function grads(step: number, k: number, n: number, o: { device: s.DeviceName; dtype: s.DType }): Tensor {
  const values = data(n + 1, 100 * step + k, 2);
  if (k % 3 === 0) return s.tensor(values.slice(0, n), o);
  if (k % 3 === 1) return s.tensor(values, o).slice([[1, n + 1]]);
  return s.tensor([values[0]], o).expand([n]);
}

describe("fusedStep", () => {
  for (const [name, rule] of RULES) {
    test(
      `${name}: webgpu against the float64 reference over 4 steps, parameters skipping steps`,
      scoped(async () => {
        requireGpu();
        const active = (step: number, k: number) => !(k === 2 && step === 1) && !(k === 4 && step === 0);
        const want = await trajectory("cpu", rule, SIZES, grads, active);
        const got = await trajectory("webgpu", rule, SIZES, grads, active);
        got.forEach((g, i) => assertClose(g, want[i], { atol: 1e-5, rtol: 1e-5 }));
      }),
    );
  }

  test(
    "more parameters than one dispatch binds: split over dispatches, same values",
    scoped(async () => {
      requireGpu();
      const rule = RULES[5][1];
      const sizes = Array.from({ length: 45 }, (_, k) => 1 + ((k * 37) % 90));
      const all = () => true;
      const want = await trajectory("cpu", rule, sizes, grads, all, 2);
      const d0 = gpu().counters.dispatches;
      const got = await trajectory("webgpu", rule, sizes, grads, all, 2);
      expect(gpu().counters.dispatches - d0).toBeGreaterThan(2);
      got.forEach((g, i) => assertClose(g, want[i], { atol: 1e-5, rtol: 1e-5 }));
    }),
  );

  test(
    "gradients that are slices of one tensor (one buffer bound for several parameters)",
    scoped(async () => {
      requireGpu();
      const rule = RULES[5][1];
      const sizes = [8, 12, 5, 64];
      const slices = (step: number, k: number, n: number, o: { device: s.DeviceName; dtype: s.DType }) => {
        const all = s.tensor(data(sizes.reduce((a, b) => a + b, 0), 7 + step, 2), o);
        const at = sizes.slice(0, k).reduce((a, b) => a + b, 0);
        return all.slice([[at, at + n]]);
      };
      const all = () => true;
      const want = await trajectory("cpu", rule, sizes, slices, all, 3);
      const got = await trajectory("webgpu", rule, sizes, slices, all, 3);
      got.forEach((g, i) => assertClose(g, want[i], { atol: 1e-5, rtol: 1e-5 }));
      const g = s.tensor(data(20, 3, 2), { device: "webgpu" });
      const r = fusedClip("clip", [g.slice([[0, 8]]), g.slice([[8, 20]])], 0.5);
      const want2 = Array.from(data(20, 3, 2));
      const norm = Math.sqrt(want2.reduce((a, x) => a + x * x, 0));
      assertClose([await r.norm.item()], [norm], { atol: 0, rtol: 1e-6 });
      const k = Math.min(1, 0.5 / (norm + 1e-6));
      assertClose(await r.grads[1].toArray(), want2.slice(8).map((x) => x * k), { atol: 1e-6, rtol: 1e-6 });
    }),
  );

  test("the reference against a hand computation of one AdamW and one Nesterov step", () => {
    const p = Float64Array.of(1, -2), m = new Float64Array(2), v = new Float64Array(2);
    const adamw: FusedRule = {
      kind: "adam",
      beta1: 0.9,
      beta2: 0.999,
      eps: 0,
      weightDecay: 0.1,
      decoupled: true,
    };
    fusedStepRef(adamw, 0.1, 1, p, 0, Float64Array.of(0.5, 0.25), 0, [m, v], 0, 2);
    // first step: m / (1 - b1) = g, sqrt(v / (1 - b2)) = |g|, so p = p (1 - lr wd) - lr sign(g)
    assertClose(p, [0.99 - 0.1, -1.98 - 0.1], { atol: 1e-15, rtol: 0 });
    assertClose(m, [0.05, 0.025], { atol: 1e-15, rtol: 0 });
    const q = Float64Array.of(1), buf = Float64Array.of(7);
    const nes: FusedRule = { kind: "sgd", momentum: 0.5, dampening: 0, nesterov: true, weightDecay: 0 };
    fusedStepRef(nes, 0.1, 2, q, 0, Float64Array.of(2), 0, [buf], 0, 1);
    expect([buf[0], q[0]]).toEqual([0.5 * 7 + 2, 1 - 0.1 * (2 + 0.5 * 5.5)]);
  });

  test(
    "bad input throws naming the caller",
    scoped(() => {
      const rule = RULES[3][1];
      const p = s.param(s.zeros([4], { device: "cpu" })), g = s.zeros([4], { device: "cpu" });
      const m = s.zeros([4], { device: "cpu" });
      const item = { p, g, t: 1, stateOffset: 0 };
      expect(() => fusedStep("Adam.step", rule, [item], [m], 0.1)).toThrow(
        "Adam.step: the rule keeps 2 state tensors (m,v), got 1",
      );
      expect(() =>
        fusedStep("Adam.step", rule, [{ ...item, g: s.zeros([5], { device: "cpu" }) }], [m, m], 0.1)
      )
        .toThrow(/Adam.step: gradient tensor \[5\] f32 on cpu does not match parameter \[4\]/);
      expect(() => fusedStep("Adam.step", rule, [{ ...item, stateOffset: 2 }], [m, m], 0.1)).toThrow(
        /state range 2 \+ 4 is outside the state tensors/,
      );
      expect(() => fusedStep("Adam.step", rule, [{ ...item, t: 0 }], [m, m], 0.1)).toThrow(
        /step must be an integer >= 1, got 0/,
      );
      for (const t of [p, g, m]) t.dispose();
    }),
  );

  test(
    "fusedClip: the norm in float64 terms, unclipped below maxNorm, empty and odd-sized gradients, bad input",
    scoped(async () => {
      requireGpu();
      const vals = [data(7, 1, 3), data(0, 2), data(130, 3, 3), data(1, 4, 3)];
      const gs = vals.map((v) => s.tensor(v, { device: "webgpu" }));
      const want = Math.sqrt(vals.reduce((a, v) => a + v.reduce((b, x) => b + x * x, 0), 0));
      for (const maxNorm of [1e6, want / 4]) {
        const r = fusedClip("clip", gs, maxNorm);
        assertClose([await r.norm.item()], [want], { atol: 0, rtol: 1e-6 });
        const k = Math.min(1, maxNorm / (want + 1e-6));
        for (const [i, g] of r.grads.entries()) {
          assertClose(await g.toArray(), Array.from(vals[i], (x) => x * k), { atol: 1e-6, rtol: 1e-6 });
        }
      }
      const cpu = s.zeros([2], { device: "cpu" });
      expect(() => fusedClip("clip", [cpu], 1)).toThrow(
        /clip: the fused kernels take float tensors on webgpu, got tensor \[2\] f32 on cpu/,
      );
    }),
  );
});
