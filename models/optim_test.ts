// Optimisers against float64 hand computations of PyTorch's update rules, gradient clipping, schedules,
// state lifetime (kept out of tidy, freed by dispose) and the no-readback rule.
import { describe, expect, test } from "vitest";
import * as s from "../mod.ts";
import type { Tensor } from "../mod.ts";
import { gpu } from "../runtime/device.ts";
import { assertClose, data, leakCheck, requireDevice, requireGpu, scoped } from "../test/helpers.ts";

leakCheck();

const DEVICES = ["cpu", "webgpu"] as const;
const P0 = [0.5, -1.25, 2, 0.1];
const GRADS = [[0.3, -0.2, 1.5, -0.7], [-0.1, 0.4, 0.9, 0.05], [0.2, 0.2, -1, 0.6]];

interface Hyper {
  lr: number[];
  momentum?: number;
  dampening?: number;
  nesterov?: boolean;
  wd?: number;
  betas?: [number, number];
  eps?: number;
  decoupled?: boolean;
}

/** PyTorch's SGD in float64. */
function sgdRef(h: Hyper): number[] {
  const p = [...P0];
  let buf: number[] | null = null;
  GRADS.forEach((g0, t) => {
    let g = g0.map((v, i) => v + (h.wd ?? 0) * p[i]);
    if (h.momentum) {
      buf = buf ? buf.map((b, i) => h.momentum! * b + (1 - (h.dampening ?? 0)) * g[i]) : [...g];
      g = h.nesterov ? g.map((v, i) => v + h.momentum! * buf![i]) : buf;
    }
    g.forEach((v, i) => (p[i] -= h.lr[t] * v));
  });
  return p;
}

/** PyTorch's Adam / AdamW in float64. */
function adamRef(h: Hyper): number[] {
  const [b1, b2] = h.betas ?? [0.9, 0.999], eps = h.eps ?? 1e-8, wd = h.wd ?? 0;
  const p = [...P0], m = P0.map(() => 0), v = P0.map(() => 0);
  GRADS.forEach((g0, t0) => {
    const t = t0 + 1, lr = h.lr[t0];
    for (let i = 0; i < p.length; i++) {
      if (h.decoupled) p[i] *= 1 - lr * wd;
      const g = h.decoupled ? g0[i] : g0[i] + wd * p[i];
      m[i] = b1 * m[i] + (1 - b1) * g;
      v[i] = b2 * v[i] + (1 - b2) * g * g;
      const denom = Math.sqrt(v[i]) / Math.sqrt(1 - b2 ** t) + eps;
      p[i] -= (lr / (1 - b1 ** t)) * (m[i] / denom);
    }
  });
  return p;
}

/** Runs `make(params)` for GRADS.length steps with the given gradients; returns the final values. */
async function run(device: s.DeviceName, make: (ps: Tensor[]) => s.Optimizer): Promise<Float64Array> {
  const dtype = device === "cpu" ? "f64" : "f32";
  const p = s.param(s.tensor(P0, { device, dtype }));
  const opt = make([p]);
  for (const g of GRADS) {
    s.tidy(() => {
      p.zeroGrad();
      p.grad = s.keep(s.tensor(g, { device, dtype }));
      opt.step();
    });
  }
  const out = Float64Array.from(await p.toArray());
  p.zeroGrad();
  p.dispose();
  opt.dispose();
  return out;
}

const CASES: [string, Hyper, (ps: Tensor[], h: Hyper) => s.Optimizer, (h: Hyper) => number[]][] = [
  ["SGD", { lr: [0.1, 0.1, 0.1] }, (ps) => new s.SGD(ps, { lr: 0.1 }), sgdRef],
  [
    "SGD momentum + dampening + weight decay",
    { lr: [0.1, 0.1, 0.1], momentum: 0.9, dampening: 0.1, wd: 0.01 },
    (ps) => new s.SGD(ps, { lr: 0.1, momentum: 0.9, dampening: 0.1, weightDecay: 0.01 }),
    sgdRef,
  ],
  [
    "SGD Nesterov",
    { lr: [0.05, 0.05, 0.05], momentum: 0.8, nesterov: true },
    (ps) => new s.SGD(ps, { lr: 0.05, momentum: 0.8, nesterov: true }),
    sgdRef,
  ],
  ["Adam", { lr: [1e-2, 1e-2, 1e-2] }, (ps) => new s.Adam(ps, { lr: 1e-2 }), adamRef],
  [
    "Adam L2 weight decay, custom betas and eps",
    { lr: [0.1, 0.1, 0.1], wd: 0.1, betas: [0.8, 0.99], eps: 1e-3 },
    (ps) => new s.Adam(ps, { lr: 0.1, weightDecay: 0.1, betas: [0.8, 0.99], eps: 1e-3 }),
    adamRef,
  ],
  [
    "AdamW (decoupled weight decay)",
    { lr: [0.1, 0.1, 0.1], wd: 0.05, decoupled: true },
    (ps) => new s.AdamW(ps, { lr: 0.1, weightDecay: 0.05 }),
    adamRef,
  ],
  [
    "AdamW default weight decay 0.01 with a warmup schedule",
    { lr: [1 / 3, 2 / 3, 1], wd: 0.01, decoupled: true },
    (ps) => new s.AdamW(ps, { lr: s.warmupSchedule(1, 3) }),
    adamRef,
  ],
];

describe("optimisers against float64 hand computations (3 steps)", () => {
  for (const device of DEVICES) {
    const tol = device === "cpu" ? { atol: 1e-13, rtol: 1e-12 } : { atol: 1e-6, rtol: 1e-5 };
    for (const [name, h, make, ref] of CASES) {
      test(`${name} (${device})`, async () => {
        requireDevice(device);
        assertClose(await run(device, (ps) => make(ps, h)), ref(h), tol);
      });
    }
  }
});

/** One parameter's trajectory under PyTorch's rules with its own step count; null gradients skip a step. */
function refParam(kind: "sgd" | "adam", h: Hyper, p0: number[], grads: (number[] | null)[]): number[] {
  const p = [...p0], m = p0.map(() => 0), v = p0.map(() => 0);
  let buf: number[] | null = null, t = 0;
  grads.forEach((g0, step) => {
    if (!g0) return;
    t++;
    const lr = h.lr[step];
    if (kind === "sgd") {
      let g = g0.map((x, i) => x + (h.wd ?? 0) * p[i]);
      if (h.momentum) {
        buf = buf ? buf.map((b, i) => h.momentum! * b + g[i]) : [...g];
        g = h.nesterov ? g.map((x, i) => x + h.momentum! * buf![i]) : buf;
      }
      g.forEach((x, i) => (p[i] -= lr * x));
      return;
    }
    const [b1, b2] = h.betas ?? [0.9, 0.999], wd = h.wd ?? 0;
    for (let i = 0; i < p.length; i++) {
      if (h.decoupled) p[i] *= 1 - lr * wd;
      const g = h.decoupled ? g0[i] : g0[i] + wd * p[i];
      m[i] = b1 * m[i] + (1 - b1) * g;
      v[i] = b2 * v[i] + (1 - b2) * g * g;
      p[i] -= (lr / (1 - b1 ** t)) * (m[i] / (Math.sqrt(v[i]) / Math.sqrt(1 - b2 ** t) + (h.eps ?? 1e-8)));
    }
  });
  return p;
}

describe("multi-tensor steps: groups by device and dtype, partial gradients", () => {
  // three parameters of different shapes and two dtypes (two groups on cpu); parameter 1 has no gradient
  // at step 2 and parameter 2 none at step 1, so steps 1 and 2 take the one-by-one path
  const SHAPES = [[2, 2], [3], [1, 2]];
  const DT: s.DType[] = ["f32", "f32", "f64"];
  const INIT = [[0.5, -1, 2, 0.25], [1, 2, 3], [-0.5, 0.75]];
  const G: (number[] | null)[][] = [
    [[0.1, 0.2, -0.3, 0.4], [0.5, -0.5, 1], [0.3, -0.2]],
    [[-0.2, 0.1, 0.1, 0.3], [0.2, 0.2, -0.4], null],
    [[0.3, -0.1, 0.2, 0.2], null, [0.1, 0.4]],
    [[0.05, 0.1, -0.2, 0.1], [-0.3, 0.1, 0.2], [-0.2, 0.2]],
    [[0.2, 0.2, 0.2, -0.2], [0.1, 0.3, -0.1], [0.4, -0.1]],
  ];
  const LR = [0.1, 0.1, 0.1, 0.1, 0.1];
  const KINDS: [string, "sgd" | "adam", Hyper, (ps: Tensor[]) => s.Optimizer][] = [
    [
      "SGD momentum Nesterov",
      "sgd",
      { lr: LR, momentum: 0.9, nesterov: true, wd: 0.01 },
      (ps) => new s.SGD(ps, { lr: 0.1, momentum: 0.9, nesterov: true, weightDecay: 0.01 }),
    ],
    ["Adam", "adam", { lr: LR, wd: 0.02 }, (ps) => new s.Adam(ps, { lr: 0.1, weightDecay: 0.02 })],
    [
      "AdamW",
      "adam",
      { lr: LR, wd: 0.1, decoupled: true },
      (ps) => new s.AdamW(ps, { lr: 0.1, weightDecay: 0.1 }),
    ],
  ];
  for (const [name, kind, h, make] of KINDS) {
    test(
      `${name} matches per-parameter float64 references`,
      scoped(async () => {
        const ps = INIT.map((v, k) =>
          s.param(s.tensor(v, { shape: SHAPES[k], device: "cpu", dtype: DT[k] }))
        );
        const opt = make(ps);
        for (const step of G) {
          s.tidy(() => {
            opt.zeroGrad();
            step.forEach((g, k) => {
              if (g) ps[k].grad = s.keep(s.tensor(g, { shape: SHAPES[k], device: "cpu", dtype: DT[k] }));
            });
            opt.step();
          });
        }
        expect(opt.paramSteps).toEqual([5, 4, 4]);
        for (let k = 0; k < 3; k++) {
          const want = refParam(kind, h, INIT[k], G.map((st) => st[k]));
          assertClose(
            await ps[k].toArray(),
            want,
            DT[k] === "f64" ? { atol: 1e-14, rtol: 1e-13 } : { atol: 1e-6, rtol: 1e-6 },
          );
        }
        opt.zeroGrad();
        opt.dispose();
        for (const p of ps) p.dispose();
      }),
    );
  }

  test(
    "composed (fused: false), a full step over many parameters of one group costs 3 dispatches each plus the rule once",
    () => {
      requireGpu();
      const ps = Array.from(
        { length: 12 },
        (_, i) => s.param(s.randn([4, i + 1], { seed: i, device: "webgpu" })),
      );
      const opt = new s.Adam(ps, { lr: 1e-3, fused: false });
      const run = () =>
        s.tidy(() => {
          opt.zeroGrad();
          for (const p of ps) p.grad = s.keep(s.ones(p.shape, { device: "webgpu" }));
          const before = gpu().counters.dispatches;
          opt.step();
          return gpu().counters.dispatches - before;
        });
      run();
      const d = run(); // second step: state exists
      expect(d).toBeLessThanOrEqual(3 * 12 + 16);
      opt.zeroGrad();
      opt.dispose();
      for (const p of ps) p.dispose();
    },
  );
});

describe("fused steps", () => {
  // sizes that leave padding in the flat state (3, 10) and a vec4 body with a scalar tail (130)
  const SHAPES = [[4, 8], [3], [10], [2, 65], [64]];
  const MAKE: [string, (ps: Tensor[], fused: boolean) => s.Optimizer][] = [
    ["SGD", (ps, fused) => new s.SGD(ps, { lr: 0.1, fused })],
    [
      "SGD momentum, dampening, L2",
      (ps, fused) => new s.SGD(ps, { lr: 0.1, momentum: 0.9, dampening: 0.2, weightDecay: 0.01, fused }),
    ],
    ["SGD Nesterov", (ps, fused) => new s.SGD(ps, { lr: 0.05, momentum: 0.8, nesterov: true, fused })],
    ["Adam L2", (ps, fused) => new s.Adam(ps, { lr: 0.02, weightDecay: 0.1, betas: [0.8, 0.99], fused })],
    ["AdamW", (ps, fused) => new s.AdamW(ps, { lr: (t) => 0.01 * (t + 1), weightDecay: 0.05, fused })],
  ];

  /** Saved parameters and optimizer state. */
  interface Saved {
    params: Float64Array[];
    state: Map<string, Float64Array>;
    stepCount: number;
    paramSteps: number[];
  }

  /**
   * Runs steps steps[0] .. steps[1] - 1 from fresh parameters, or from `load`'s parameters and state;
   * parameter 2 has no gradient at step 1 (a partial step). Returns parameters and state.
   */
  async function run(
    device: s.DeviceName,
    dtype: s.DType,
    make: (ps: Tensor[]) => s.Optimizer,
    steps: [number, number],
    load?: Saved,
  ): Promise<Saved> {
    const ps = SHAPES.map((sh, k) => {
      const init = load ? load.params[k] : data(sh.reduce((a, b) => a * b, 1), k + 1);
      return s.param(s.tensor(init, { shape: sh, device, dtype }));
    });
    const grad = (step: number, k: number) =>
      step === 1 && k === 2
        ? null
        : s.tensor(data(ps[k].size, 50 + 10 * step + k, 2), { shape: SHAPES[k], device, dtype });
    const opt = make(ps);
    if (load) {
      const m = new Map([...load.state].map(([key, v]) => {
        const shape = SHAPES[Number(key.split(".")[0])];
        return [key, s.tensor(v, { shape, device, dtype })];
      }));
      opt.loadState(m, load.stepCount, load.paramSteps);
      for (const t of m.values()) t.dispose();
    }
    for (let step = steps[0]; step < steps[1]; step++) {
      s.tidy(() => {
        opt.zeroGrad();
        ps.forEach((p, k) => {
          const g = grad(step, k);
          if (g) p.grad = s.keep(g);
        });
        opt.step();
      });
    }
    const state = new Map<string, Float64Array>();
    for (const [k, t] of opt.stateTensors()) state.set(k, Float64Array.from(await t.toArray()));
    const params = await Promise.all(ps.map(async (p) => Float64Array.from(await p.toArray())));
    const r = { params, state, stepCount: opt.stepCount, paramSteps: [...opt.paramSteps] };
    opt.zeroGrad();
    opt.dispose();
    for (const p of ps) p.dispose();
    return r;
  }

  for (const device of DEVICES) {
    const dtype = device === "cpu" ? "f64" : "f32";
    const tol = device === "cpu" ? { atol: 1e-13, rtol: 1e-12 } : { atol: 2e-6, rtol: 1e-5 };
    for (const [name, make] of MAKE) {
      test(
        `${name}: fused equals the composed rule over 5 steps, state included (${device})`,
        scoped(async () => {
          requireDevice(device);
          const fused = await run(device, dtype, (ps) => make(ps, true), [0, 5]);
          const composed = await run(device, dtype, (ps) => make(ps, false), [0, 5]);
          expect(fused.paramSteps).toEqual([5, 5, 4, 5, 5]);
          fused.params.forEach((p, k) => assertClose(p, composed.params[k], tol));
          expect([...fused.state.keys()]).toEqual([...composed.state.keys()]);
          for (const [k, v] of fused.state) assertClose(v, composed.state.get(k)!, tol);
        }),
      );
    }
  }

  test(
    "an f16 group: the fused kernel (f32 math, one rounding per store) stays within f16 rounding of the composed rule",
    scoped(async () => {
      requireGpu();
      if (!gpu().hasF16) throw new Error("this adapter has no shader-f16: the f16 fused step cannot run");
      for (const [, make] of [MAKE[1], MAKE[4]]) {
        const fused = await run("webgpu", "f16", (ps) => make(ps, true), [0, 3]);
        const composed = await run("webgpu", "f16", (ps) => make(ps, false), [0, 3]);
        fused.params.forEach((p, k) => assertClose(p, composed.params[k], { atol: 4e-3, rtol: 4e-3 }));
      }
    }),
  );

  test(
    "state saved from a fused optimizer and loaded into a fused or composed one continues the same run",
    scoped(async () => {
      requireGpu();
      const make = MAKE[4][1];
      const whole = await run("webgpu", "f32", (ps) => make(ps, true), [0, 5]);
      const first = await run("webgpu", "f32", (ps) => make(ps, true), [0, 3]);
      for (const fused of [true, false]) {
        const rest = await run("webgpu", "f32", (ps) => make(ps, fused), [3, 5], first);
        rest.params.forEach((p, k) => assertClose(p, whole.params[k], { atol: 2e-6, rtol: 1e-5 }));
        expect(rest.paramSteps).toEqual(whole.paramSteps);
      }
    }),
  );

  test(
    "a fused step over 12 parameters of one group is one dispatch (no concatenation, no copy-back)",
    () => {
      requireGpu();
      const ps = Array.from(
        { length: 12 },
        (_, i) => s.param(s.randn([4, i + 1], { seed: i, device: "webgpu" })),
      );
      for (const opt of [new s.AdamW(ps, { lr: 1e-3 }), new s.SGD(ps, { lr: 1e-3, momentum: 0.9 })]) {
        const run = () =>
          s.tidy(() => {
            opt.zeroGrad();
            for (const p of ps) p.grad = s.keep(s.ones(p.shape, { device: "webgpu" }));
            const before = gpu().counters.dispatches;
            opt.step();
            return gpu().counters.dispatches - before;
          });
        // parameters and gradients: 24 bindings, with the state and the uniform block within lavapipe's 32
        const room = Math.floor((gpu().limits.maxStorageBuffersPerShaderStage - 3) / 2);
        expect(run()).toBeLessThanOrEqual(Math.ceil(12 / room) + 2); // the first step also fills the state
        expect(run()).toBe(Math.ceil(12 / room));
        opt.zeroGrad();
        opt.dispose();
      }
      for (const p of ps) p.dispose();
    },
  );
});

describe("Optimizer mechanics", () => {
  test(
    "parameters without a gradient are skipped; lr follows the schedule; stepCount counts",
    scoped(async () => {
      const a = s.param(s.tensor([1, 1], { device: "cpu" })), b = s.param(s.tensor([5], { device: "cpu" }));
      const opt = new s.SGD([a, b], { lr: (t) => 0.5 / (t + 1) });
      expect(opt.lr).toBe(0.5);
      a.mul(2).sum().backward(); // b has no gradient
      opt.step();
      expect(Array.from(await a.toArray())).toEqual([0, 0]);
      expect(Array.from(await b.toArray())).toEqual([5]);
      expect([opt.stepCount, opt.lr]).toEqual([1, 0.25]);
      opt.zeroGrad();
      expect(a.grad).toBeNull();
      opt.dispose();
      a.dispose();
      b.dispose();
    }),
  );

  for (const device of DEVICES) {
    test(`state outlives tidy, opt.dispose() frees it; updates are in place (${device})`, () => {
      requireDevice(device);
      const w = s.param(s.randn([64, 32], { seed: 1, device }));
      const before = s.memory(device).bytesInUse;
      const opt = new s.Adam([w], { lr: 1e-3 });
      for (let i = 0; i < 3; i++) {
        s.tidy(() => {
          opt.zeroGrad();
          w.mul(w).sum().backward();
          opt.step();
        });
      }
      expect(w.disposed).toBe(false);
      const state = [...opt.stateTensors().values()];
      expect(state.map((t) => t.disposed)).toEqual([false, false]);
      w.zeroGrad();
      // exactly the two moment buffers are alive
      expect(s.memory(device).bytesInUse - before).toBe(2 * state[0].storage.bytes);
      opt.dispose();
      expect(state.map((t) => t.disposed)).toEqual([true, true]);
      expect(s.memory(device).bytesInUse).toBe(before);
      expect(() => opt.step()).toThrow(/Adam.step: the optimizer was disposed/);
      w.dispose();
    });
  }

  test("a step never reads back: 20 steps with momentum, Adam and clipping, 0 readbacks", () => {
    requireGpu();
    const w = s.param(s.randn([16, 8], { seed: 2, device: "webgpu" }));
    const b = s.param(s.randn([8], { seed: 3, device: "webgpu" }));
    const x = s.randn([4, 16], { seed: 4, device: "webgpu" });
    const opts = [
      new s.SGD([w, b], { lr: 0.01, momentum: 0.9, nesterov: true }),
      new s.AdamW([w, b], { lr: 1e-3 }),
    ];
    const readbacks = gpu().counters.readbacks;
    for (let i = 0; i < 20; i++) {
      s.tidy(() => {
        for (const p of [w, b]) p.zeroGrad();
        x.matmul(w).add(b).tanh().sum().backward();
        s.clipGradNorm([w, b], 0.5);
        opts[i % 2].step();
      });
    }
    expect(gpu().counters.readbacks).toBe(readbacks);
    for (const o of opts) o.dispose();
    for (const t of [w, b]) {
      t.zeroGrad();
      t.dispose();
    }
    x.dispose();
  });

  test(
    "loadState validates everything before changing anything",
    scoped(async () => {
      const w = s.param(s.tensor([1, 2], { device: "cpu" }));
      const opt = new s.Adam([w], { lr: 0.1 });
      w.mul(w).sum().backward();
      opt.step();
      const m0 = Array.from(await opt.stateTensors().get("0.m")!.toArray());
      const bad = new Map([["0.m", s.zeros([3], { device: "cpu" })]]);
      expect(() => opt.loadState(bad, 5)).toThrow(/state "0.m" is \[3\] f32 but parameter 0 is \[2\] f32/);
      expect(() => opt.loadState(new Map([["7.m", s.zeros([2], { device: "cpu" })]]), 5)).toThrow(
        /state "7.m" names no parameter/,
      );
      expect(Array.from(await opt.stateTensors().get("0.m")!.toArray())).toEqual(m0);
      expect(opt.stepCount).toBe(1);
      opt.dispose();
      w.zeroGrad();
      w.dispose();
    }),
  );

  test(
    "bad options throw",
    scoped(() => {
      const w = s.param(s.tensor([1], { device: "cpu" }));
      expect(() => new s.SGD([w], { lr: 0.1, nesterov: true })).toThrow(/nesterov needs momentum > 0/);
      expect(() => new s.Adam([w], { lr: 0.1, betas: [1, 0.9] })).toThrow(/beta1 must be in \[0, 1\), got 1/);
      expect(() => new s.SGD([w, w], { lr: 0.1 })).toThrow(/a parameter is listed twice/);
      expect(() => new s.SGD([s.tensor([1], { device: "cpu" })], { lr: 1 })).toThrow(/does not require grad/);
      const o = new s.SGD([w], { lr: () => -1 });
      w.sum().backward();
      expect(() => o.step()).toThrow(/lr at step 0 must be a non-negative number, got -1/);
      w.zeroGrad();
      w.dispose();
    }),
  );
});

describe("clipGradNorm", () => {
  for (const device of DEVICES) {
    test(
      `global norm over all gradients; clipped above maxNorm, untouched below (${device})`,
      scoped(async () => {
        requireDevice(device);
        const a = s.param(s.tensor([0, 0], { device })), b = s.param(s.tensor([0], { device }));
        a.grad = s.keep(s.tensor([3, 4], { device }));
        b.grad = s.keep(s.tensor([12], { device }));
        const norm = s.clipGradNorm([a, b], 6.5);
        expect(norm.shape).toEqual([]);
        assertClose([await norm.item()], [13], { atol: 1e-5, rtol: 0 });
        const k = 6.5 / (13 + 1e-6);
        assertClose(await a.grad!.toArray(), [3 * k, 4 * k], { atol: 1e-6, rtol: 1e-6 });
        assertClose(await b.grad!.toArray(), [12 * k], { atol: 1e-6, rtol: 1e-6 });
        const again = s.clipGradNorm([a, b], 100); // now 6.5: no change
        assertClose([await again.item()], [6.5], { atol: 1e-5, rtol: 0 });
        assertClose(await a.grad!.toArray(), [3 * k, 4 * k], { atol: 1e-6, rtol: 1e-6 });
        for (const t of [a, b]) {
          t.zeroGrad();
          t.dispose();
        }
      }),
    );
  }

  test(
    "gradients that share storage (one backward tensor handed to two leaves) are scaled once each",
    scoped(
      async () => {
        const a = s.param(s.tensor([1, 2], { device: "cpu" })),
          b = s.param(s.tensor([3, 4], { device: "cpu" }));
        a.add(b).mul(2).sum().backward(); // both gradients are views of one [2, 2] tensor
        expect(a.grad!.storage).toBe(b.grad!.storage);
        s.clipGradNorm([a, b], 2); // norm 4 -> scale 0.5
        assertClose(await a.grad!.toArray(), [1, 1], { atol: 1e-6, rtol: 0 });
        assertClose(await b.grad!.toArray(), [1, 1], { atol: 1e-6, rtol: 0 });
        for (const t of [a, b]) {
          t.zeroGrad();
          t.dispose();
        }
      },
    ),
  );

  test(
    "fused (webgpu) equals composed: 40 gradients (several dispatches), shared storage, broadcast views, f16",
    scoped(async () => {
      requireGpu();
      const results: Float64Array[][] = [];
      for (const fused of [true, false]) {
        const ps = Array.from(
          { length: 40 },
          (_, k) => s.param(s.zeros([1 + ((k * 37) % 70)], { device: "webgpu" })),
        );
        const a = s.param(s.zeros([2, 3], { device: "webgpu" })),
          b = s.param(s.zeros([2, 3], { device: "webgpu" }));
        const h = gpu().hasF16 ? [s.param(s.zeros([5], { device: "webgpu", dtype: "f16" }))] : [];
        ps.forEach((p, k) => (p.grad = s.keep(s.tensor(data(p.size, k + 1, 3), { device: "webgpu" }))));
        a.add(b).mul(2).sum().backward(); // a's and b's gradients: views of one tensor
        for (const p of h) p.grad = s.keep(s.full([5], 0.5, { device: "webgpu", dtype: "f16" }));
        const all = [...ps, a, b, ...h];
        const norm = s.clipGradNorm(all, 2, { fused });
        const out = [Float64Array.of(await norm.item())];
        for (const p of all) out.push(Float64Array.from(await p.grad!.toArray()));
        results.push(out);
        norm.dispose();
        for (const p of all) {
          p.zeroGrad();
          p.dispose();
        }
      }
      results[0].forEach((r, i) => assertClose(r, results[1][i], { atol: 1e-5, rtol: 1e-5 }));
      expect(results[0][0][0]).toBeGreaterThan(2); // the case clips
    }),
  );

  test(
    "fused: a dispatch for the squares, one for the norm, one for the copies (12 gradients, 32 bindings)",
    scoped(() => {
      requireGpu();
      const ps = Array.from({ length: 12 }, (_, i) => s.param(s.zeros([4, i + 1], { device: "webgpu" })));
      for (const p of ps) p.grad = s.keep(s.ones(p.shape, { device: "webgpu" }));
      const d0 = gpu().counters.dispatches;
      const norm = s.clipGradNorm(ps, 1);
      // bindings per dispatch: the adapter's storage limit less the uniform block and one more buffer
      const room = gpu().limits.maxStorageBuffersPerShaderStage - 2; // 30 on lavapipe: one dispatch each
      expect(gpu().counters.dispatches - d0).toBe(
        Math.ceil(12 / room) + 1 + Math.ceil(12 / Math.floor(room / 2)),
      );
      norm.dispose();
      for (const p of ps) {
        p.zeroGrad();
        p.dispose();
      }
    }),
  );

  test(
    "no gradients at all is an error",
    scoped(() => {
      expect(() => s.clipGradNorm([s.tensor([1], { device: "cpu" })], 1)).toThrow(
        /no parameter has a gradient/,
      );
    }),
  );
});

describe("schedules", () => {
  test("constant, linear warmup, cosine with warmup and floor", () => {
    expect([0, 10, 1e6].map(s.constantSchedule(0.3))).toEqual([0.3, 0.3, 0.3]);
    expect([0, 1, 2, 3, 4, 50].map(s.warmupSchedule(2, 4))).toEqual([0.5, 1, 1.5, 2, 2, 2]);
    const c = s.cosineSchedule(1, 12, { warmup: 2, minLr: 0.1 });
    const want = (t: number) =>
      t < 2 ? (t + 1) / 2 : t >= 12 ? 0.1 : 0.1 + 0.45 * (1 + Math.cos((Math.PI * (t - 2)) / 10));
    for (const t of [0, 1, 2, 3, 7, 11, 12, 40]) expect(c(t)).toBeCloseTo(want(t), 14);
    expect(c(7)).toBeCloseTo(0.55, 14); // halfway
    const plain = s.cosineSchedule(2, 4);
    expect([0, 2, 4].map(plain).map((v) => Number(v.toFixed(12)))).toEqual([2, 1, 0]);
    expect(() => s.cosineSchedule(1, 5, { warmup: 5 })).toThrow(/0 <= warmup < total/);
    expect(() => s.warmupSchedule(1, -1)).toThrow(/warmup must be an integer >= 0/);
  });
});

describe("trainStep", () => {
  const net = (device: "cpu" | "webgpu") =>
    new s.Sequential(
      new s.Linear(6, 8, { seed: 1, device }),
      new s.ReLU(),
      new s.Linear(8, 3, { seed: 2, device }),
    );
  const batch = (device: "cpu" | "webgpu") => ({
    x: s.tensor(data(5 * 6, 3, 1), { shape: [5, 6], device }),
    y: s.tensor([0, 2, 1, 1, 0], { dtype: "i32", device }),
  });
  for (const device of ["cpu", "webgpu"] as const) {
    test(
      `the same losses and parameters as zeroGrad, loss, backward, step, item (${device})`,
      scoped(async () => {
        if (device === "webgpu") requireGpu();
        const [a, b] = [net(device), net(device)];
        const [oa, ob] = [
          new s.AdamW(a.parameters(), { lr: 0.05 }),
          new s.AdamW(b.parameters(), { lr: 0.05 }),
        ];
        const { x, y } = batch(device);
        const submits0 = device === "webgpu" ? gpu().counters.submits : 0;
        const got: number[] = [];
        for (let i = 0; i < 4; i++) got.push(await s.trainStep(oa, () => s.crossEntropy(a.forward(x), y)));
        if (device === "webgpu") expect(gpu().counters.submits - submits0).toBeLessThanOrEqual(8); // 2 a step
        const want: number[] = [];
        for (let i = 0; i < 4; i++) {
          const l = s.tidy(() => {
            ob.zeroGrad();
            const l = s.crossEntropy(b.forward(x), y);
            l.backward();
            ob.step();
            return l;
          });
          want.push(await l.item());
          l.dispose();
        }
        expect(got).toEqual(want);
        expect(got[3]).toBeLessThan(got[0]);
        const pa = a.parameters(), pb = b.parameters();
        for (let i = 0; i < pa.length; i++) expect(await pa[i].toArray()).toEqual(await pb[i].toArray());
        for (const t of [oa, ob, a, b, x, y]) t.dispose();
      }),
    );
  }

  test(
    "a loss of more than one element, or a loss function that throws, fails the step cleanly",
    scoped(async () => {
      const a = net("cpu"), opt = new s.SGD(a.parameters(), { lr: 0.1 });
      const { x, y } = batch("cpu");
      await expect(s.trainStep(opt, () => a.forward(x))).rejects.toThrow(
        /trainStep: the loss must have one element, got/,
      );
      await expect(s.trainStep(opt, () => {
        throw new Error("bad batch");
      })).rejects.toThrow("bad batch");
      expect(await s.trainStep(opt, () => s.crossEntropy(a.forward(x), y))).toBeGreaterThan(0);
      for (const t of [opt, a, x, y]) t.dispose();
    }),
  );
});
