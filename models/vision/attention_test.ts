// The vision survey's attention modules (issue #14): shapes, a hand-checkable case per module, FLOP counts,
// gradients reaching every parameter with the cpu and webgpu backends agreeing (values and gradients),
// float64 gradcheck on a tiny case, and named errors for bad input.
import { describe, expect, test } from "vitest";
import * as s from "../../mod.ts";
import type { Module, Tensor } from "../../mod.ts";
import { assertClose, leakCheck, requireGpu, scoped } from "../../test/helpers.ts";

leakCheck();

const arr = async (t: Tensor) => Array.from(await t.toArray());
const sig = (v: number) => 1 / (1 + Math.exp(-v));

/** The module field holding parameter `name` ("fc1.weight"): [owner, key]. */
function slot(m: Module, name: string): [Record<string, unknown>, string] {
  const parts = name.split(".");
  let o = m as unknown as Record<string, unknown>;
  for (const p of parts.slice(0, -1)) o = o[p] as Record<string, unknown>;
  return [o, parts[parts.length - 1]];
}

/** Replaces parameters by tensors of the given values (same shape, device, dtype). */
function setParams(m: Module, values: Record<string, number[]>): void {
  const named = new Map(m.namedParameters());
  for (const [name, v] of Object.entries(values)) {
    const old = named.get(name);
    if (!old) throw new Error(`no parameter ${name} in ${m.namedParameters().map(([n]) => n)}`);
    const [o, k] = slot(m, name);
    o[k] = s.param(s.tensor(v, { shape: old.shape, dtype: old.dtype, device: old.device }));
    old.dispose();
  }
}

/** Zeros for every parameter of `m` not named in `values`, then `values`. */
function setAll(m: Module, values: Record<string, number[]>): void {
  const all: Record<string, number[]> = {};
  for (const [n, t] of m.namedParameters()) all[n] = values[n] ?? new Array(t.size).fill(0);
  setParams(m, all);
}

/** Runs fn with the module's parameters temporarily replaced by `ps` (in namedParameters order). */
function withParams<T>(m: Module, ps: Tensor[], fn: () => T): T {
  const names = m.namedParameters().map(([n]) => n);
  const saved = names.map((n) => {
    const [o, k] = slot(m, n);
    return o[k];
  });
  names.forEach((n, i) => {
    const [o, k] = slot(m, n);
    o[k] = ps[i];
  });
  try {
    return fn();
  } finally {
    names.forEach((n, i) => {
      const [o, k] = slot(m, n);
      o[k] = saved[i];
    });
  }
}

type Build = (o: { device: "cpu" | "webgpu"; dtype: "f32" | "f64" }) => Module;
interface Case {
  name: string;
  build: Build;
  /** Input shape: (N, C, H, W), or (B, T, D) for ViTAttention. */
  shape: number[];
  /** The output's shape (default: the input's). */
  out?: number[];
}

const CASES: Case[] = [
  {
    name: "Conv2d",
    build: (o) => new s.Conv2d(4, 6, 3, { padding: 2, dilation: 2, stride: 2, seed: 1, ...o }),
    shape: [2, 4, 7, 6],
    out: [2, 6, 4, 3],
  },
  {
    name: "Conv2d grouped",
    build: (o) => new s.Conv2d(4, 6, [3, 1], { groups: 2, padding: [1, 0], seed: 1, ...o }),
    shape: [1, 4, 5, 5],
    out: [1, 6, 5, 5],
  },
  { name: "SE", build: (o) => new s.SE(16, { r: 4, seed: 2, ...o }), shape: [2, 16, 5, 4] },
  { name: "ECA", build: (o) => new s.ECA(16, { seed: 3, ...o }), shape: [2, 16, 5, 4] },
  { name: "NonLocal", build: (o) => new s.NonLocal(6, { seed: 4, ...o }), shape: [2, 6, 4, 5] },
  { name: "CBAM", build: (o) => new s.CBAM(8, { r: 2, seed: 5, ...o }), shape: [2, 8, 6, 7] },
  { name: "BAM (sum)", build: (o) => new s.BAM(8, { r: 2, seed: 6, ...o }), shape: [2, 8, 9, 9] },
  {
    name: "BAM (product)",
    build: (o) => new s.BAM(8, { r: 2, combine: "product", seed: 6, ...o }),
    shape: [1, 8, 6, 6],
  },
  { name: "ViTAttention", build: (o) => new s.ViTAttention(12, 3, { seed: 7, ...o }), shape: [2, 5, 12] },
];

/** Tiny cases for float64 gradcheck (every parameter and the input). */
const TINY: Case[] = [
  {
    name: "Conv2d",
    build: (o) => new s.Conv2d(2, 2, 2, { padding: 1, stride: 2, seed: 1, ...o }),
    shape: [1, 2, 3, 3],
  },
  { name: "SE", build: (o) => new s.SE(4, { r: 2, seed: 2, ...o }), shape: [1, 4, 2, 2] },
  { name: "ECA", build: (o) => new s.ECA(4, { k: 3, seed: 3, ...o }), shape: [2, 4, 2, 2] },
  { name: "NonLocal", build: (o) => new s.NonLocal(2, { seed: 4, ...o }), shape: [1, 2, 2, 3] },
  { name: "CBAM", build: (o) => new s.CBAM(4, { r: 2, kernel: 3, seed: 5, ...o }), shape: [1, 4, 3, 3] },
  { name: "BAM", build: (o) => new s.BAM(4, { r: 2, dilation: 1, seed: 6, ...o }), shape: [1, 4, 3, 3] },
  {
    name: "BAM product",
    build: (o) => new s.BAM(4, { r: 2, dilation: 2, combine: "product", seed: 6, ...o }),
    shape: [1, 4, 3, 3],
  },
  { name: "ViTAttention", build: (o) => new s.ViTAttention(4, 2, { seed: 7, ...o }), shape: [1, 3, 4] },
];

describe("vision attention modules", () => {
  for (const c of CASES) {
    test(
      `${c.name}: output shape, gradients reach every parameter, cpu and webgpu agree on values and gradients`,
      scoped(async () => {
        requireGpu();
        const x0 = s.randn(c.shape, { seed: 11, device: "cpu" });
        const results: Record<string, { y: number[]; grads: Map<string, number[]> }> = {};
        for (const device of ["cpu", "webgpu"] as const) {
          const m = c.build({ device, dtype: "f32" });
          try {
            const x = (await x0.to(device)).detach();
            x.requiresGrad = true;
            const y = m.forward(x);
            expect(y.shape).toEqual(c.out ?? c.shape);
            const cot = await s.randn(y.shape, { seed: 12, device: "cpu" }).to(device);
            y.mul(cot).sum().backward();
            const grads = new Map<string, number[]>();
            for (const [n, p] of m.namedParameters()) {
              expect(p.grad, `${device}: ${n} has no gradient`).not.toBeNull();
              const g = await arr(p.grad!);
              expect(g.some((v) => v !== 0), `${device}: ${n}'s gradient is all zeros`).toBe(true);
              grads.set(n, g);
            }
            grads.set("x", await arr(x.grad!));
            results[device] = { y: await arr(y), grads };
            x.zeroGrad();
          } finally {
            m.dispose();
          }
        }
        const tol = { atol: 2e-4, rtol: 2e-3 };
        assertClose(results.webgpu.y, results.cpu.y, tol);
        for (const [n, g] of results.cpu.grads) {
          try {
            assertClose(results.webgpu.grads.get(n)!, g, tol);
          } catch (e) {
            throw new Error(`${c.name}: webgpu d${n} vs cpu: ${(e as Error).message}`);
          }
        }
      }),
    );
  }

  for (const c of TINY) {
    test(
      `${c.name}: float64 gradcheck of the input and every parameter on cpu`,
      scoped(async () => {
        const m = c.build({ device: "cpu", dtype: "f64" });
        try {
          const x = s.randn(c.shape, { seed: 21, device: "cpu", dtype: "f64" });
          const ps = m.parameters();
          const report = await s.gradcheck(
            (xx, ...pp) => withParams(m, pp, () => m.forward(xx)),
            [x, ...ps],
          );
          expect(report.maxError.length).toBe(1 + ps.length);
        } finally {
          m.dispose();
        }
      }),
    );
  }

  test(
    "Conv2d: PyTorch's default init (|w|, |b| <= 1/sqrt(fanIn), spread to the bound), equal to the conv2d op",
    scoped(async () => {
      const conv = new s.Conv2d(8, 32, 3, { groups: 2, seed: 3, device: "cpu" });
      try {
        const b = 1 / Math.sqrt(4 * 9); // fanIn = C / groups * KH * KW = 36
        for (const t of [conv.weight, conv.bias!]) {
          const v = await arr(t);
          const m = Math.max(...v.map(Math.abs));
          expect(m).toBeLessThanOrEqual(b);
          expect(m).toBeGreaterThan(0.9 * b);
        }
        expect(conv.weight.shape).toEqual([32, 4, 3, 3]);
        const x = s.randn([1, 8, 5, 5], { seed: 4, device: "cpu" });
        const y = conv.forward(x);
        const want = s.conv2d(x, conv.weight, { groups: 2, bias: conv.bias });
        assertClose(await arr(y), await arr(want), { atol: 0, rtol: 0 });
        expect(conv.outputShape([1, 8, 5, 5])).toEqual([1, 32, 3, 3]);
        // 1 * 32 * 3 * 3 outputs, each 2 * 4 * 9 FLOPs plus the bias
        expect(conv.flops([1, 8, 5, 5])).toBe(288 * (72 + 1));
        const noBias = new s.Conv2d(3, 4, 1, { bias: false, device: "cpu" });
        expect(noBias.numParameters()).toBe(12);
        expect(noBias.bias).toBeNull();
        noBias.dispose();
      } finally {
        conv.dispose();
      }
    }),
  );

  test(
    "SE by hand: C 2, r 2; GAP [1, 2] -> relu(1 + 2) = 3 -> [3, -3] -> weights [sigmoid(3), sigmoid(-3)]",
    scoped(async () => {
      const se = new s.SE(2, { r: 2, device: "cpu" });
      try {
        // Linear weights are (in, out): fc1 (2, 1), fc2 (1, 2)
        setAll(se, { "fc1.weight": [1, 1], "fc2.weight": [1, -1] });
        const x = s.tensor([1, 1, 1, 1, 2, 2, 2, 2], { shape: [1, 2, 2, 2], device: "cpu" });
        const { y, weights } = se.forwardWithAttention(x);
        assertClose(await arr(weights), [sig(3), sig(-3)], { atol: 1e-6 });
        assertClose(
          await arr(y),
          [1, 1, 1, 1].map(() => sig(3)).concat([2, 2, 2, 2].map((v) => v * sig(-3))),
          {
            atol: 1e-6,
          },
        );
        // pool 8, fc1 2*2*1 + 1, relu 1, fc2 2*1*2 + 2, sigmoid 2, scale 8
        expect(se.flops([1, 2, 2, 2])).toBe(8 + 5 + 1 + 6 + 2 + 8);
        expect(se.numParameters()).toBe(2 + 1 + 2 + 2);
      } finally {
        se.dispose();
      }
    }),
  );

  test(
    "SE on ResNet-50's 16 bottleneck outputs adds 0.005-0.02 G multiply-adds (the paper: 3.86 -> 3.87 GFLOPs)",
    scoped(() => {
      // [channels, side, blocks] of ResNet-50's four stages at 224 x 224
      const stages = [[256, 56, 3], [512, 28, 4], [1024, 14, 6], [2048, 7, 3]];
      let flops = 0, params = 0;
      for (const [C, side, blocks] of stages) {
        const se = new s.SE(C, { device: "cpu" });
        flops += blocks * se.flops([1, C, side, side]);
        params += blocks * se.numParameters();
        se.dispose();
      }
      const gmacs = flops / 2 / 1e9; // the papers' GFLOPs count multiply-adds
      expect(gmacs).toBeGreaterThan(0.005);
      expect(gmacs).toBeLessThan(0.02);
      // SE-ResNet-50 has ~2.5M more parameters than ResNet-50 (28.1M vs 25.6M in the SE paper)
      expect(params / 1e6).toBeGreaterThan(2.4);
      expect(params / 1e6).toBeLessThan(2.6);
    }),
  );

  test(
    "ECA by hand: C 3, k 3, weight [1, 0, -1] over GAP [1, 2, 3] with zero padding -> [-2, -2, 2]",
    scoped(async () => {
      const eca = new s.ECA(3, { k: 3, device: "cpu" });
      try {
        setParams(eca, { "conv.weight": [1, 0, -1] });
        const x = s.tensor([1, 1, 2, 2, 3, 3], { shape: [1, 3, 1, 2], device: "cpu" });
        const { y, weights } = eca.forwardWithAttention(x);
        assertClose(await arr(weights), [sig(-2), sig(-2), sig(2)], { atol: 1e-6 });
        assertClose(await arr(y), [sig(-2), sig(-2), 2 * sig(-2), 2 * sig(-2), 3 * sig(2), 3 * sig(2)], {
          atol: 1e-6,
        });
        expect(eca.numParameters()).toBe(3);
        // pool 6, conv 2*3*3, sigmoid 3, scale 6
        expect(eca.flops([1, 3, 1, 2])).toBe(6 + 18 + 3 + 6);
      } finally {
        eca.dispose();
      }
    }),
  );

  test(
    "ECA's kernel rule: nearest odd of log2(C)/2 + 1/2, ties up; ResNet-50's widths give 86 parameters",
    () => {
      expect([1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048].map((c) => s.ecaKernelSize(c)))
        .toEqual([1, 1, 1, 3, 3, 3, 3, 5, 5, 5, 5, 7]);
      expect(s.ecaKernelSize(64, 1, 0)).toBe(7); // log2(64) = 6 -> 7
      // ECA's abstract says 80 parameters for ResNet-50 (5 per block); with this rule C 2048 gets k 7
      const k = (c: number) => s.ecaKernelSize(c);
      expect(3 * k(256) + 4 * k(512) + 6 * k(1024) + 3 * k(2048)).toBe(86);
    },
  );

  test(
    "NonLocal: zero theta and phi give a uniform map and y = W_z mean_j g(x_j) + x; the map equals a direct softmax",
    scoped(async () => {
      const nl = new s.NonLocal(2, { device: "cpu" });
      try {
        expect(nl.inter).toBe(1);
        // conv weights (O, C, 1, 1): g picks channel 0, W_z copies y to both channels with biases [1, -1]
        setAll(nl, { "g.weight": [1, 0], "wz.weight": [1, 1], "wz.bias": [1, -1] });
        const xv = [1, 2, 3, 4, 5, 6, /* channel 1 */ 0, 0, 0, 0, 0, 0];
        const x = s.tensor(xv, { shape: [1, 2, 2, 3], device: "cpu" });
        const { y, map } = nl.forwardWithAttention(x, [1, 2]);
        assertClose(await arr(map), new Array(6).fill(1 / 6), { atol: 1e-7 });
        const m = 3.5; // the mean of channel 0
        assertClose(await arr(y), [...xv.slice(0, 6).map((v) => v + m + 1), ...new Array(6).fill(m - 1)], {
          atol: 1e-6,
        });
      } finally {
        nl.dispose();
      }
      // a random block: the query map against float64 loops over theta(x_q) . phi(x_j)
      const nl2 = new s.NonLocal(4, { seed: 9, device: "cpu", dtype: "f64" });
      try {
        const [N, C, H, W] = [2, 4, 3, 3], Ci = 2;
        const x = s.randn([N, C, H, W], { seed: 10, device: "cpu", dtype: "f64" });
        const xs = await arr(x);
        const [tw, tb, pw, pb] = await Promise.all(
          [nl2.theta.weight, nl2.theta.bias!, nl2.phi.weight, nl2.phi.bias!].map(arr),
        );
        const emb = (w: number[], b: number[], n: number, p: number, o: number) =>
          b[o] + Array.from({ length: C }, (_, c) => w[o * C + c] * xs[(n * C + c) * H * W + p])
            .reduce((a, v) => a + v, 0);
        const q = 1 * W + 2;
        const want: number[] = [];
        for (let n = 0; n < N; n++) {
          const sc = Array.from({ length: H * W }, (_, j) => {
            let d = 0;
            for (let o = 0; o < Ci; o++) d += emb(tw, tb, n, q, o) * emb(pw, pb, n, j, o);
            return d;
          });
          const mx = Math.max(...sc), e = sc.map((v) => Math.exp(v - mx)), z = e.reduce((a, v) => a + v, 0);
          want.push(...e.map((v) => v / z));
        }
        const { map } = nl2.forwardWithAttention(x, [1, 2]);
        expect(map.shape).toEqual([N, H, W]);
        assertClose(await arr(map), want, { atol: 1e-12, rtol: 1e-12 });
      } finally {
        nl2.dispose();
      }
    }),
  );

  test(
    "NonLocal: zeroInit makes the block the identity; FLOPs by hand",
    scoped(async () => {
      const nl = new s.NonLocal(4, { zeroInit: true, seed: 1, device: "cpu" });
      try {
        const x = s.randn([1, 4, 3, 2], { seed: 2, device: "cpu" });
        assertClose(await arr(nl.forward(x)), await arr(x), { atol: 0, rtol: 0 });
        // P 6, Ci 2: 3 P (2*4*2 + 2) + 4 P^2 Ci + 5 P^2 + P (2*2*4 + 4) + P C
        expect(nl.flops([1, 4, 3, 2])).toBe(3 * 6 * 18 + 4 * 36 * 2 + 5 * 36 + 6 * 20 + 24);
      } finally {
        nl.dispose();
      }
    }),
  );

  test(
    "CBAM by hand: a zero MLP gives Mc = 1/2; a 7x7 conv tapping the average map's centre gives Ms = sigmoid(mean_c x / 2)",
    scoped(async () => {
      const cbam = new s.CBAM(2, { r: 2, device: "cpu" });
      try {
        const w = new Array(2 * 49).fill(0);
        w[3 * 7 + 3] = 1; // input channel 0 (the average map), centre tap
        setAll(cbam, { "spatialConv.weight": w });
        const xv = [1, -2, 3, 0, /* channel 1 */ 5, 2, -1, 4];
        const x = s.tensor(xv, { shape: [1, 2, 2, 2], device: "cpu" });
        const { y, channel, spatial } = cbam.forwardWithAttention(x);
        assertClose(await arr(channel), [0.5, 0.5], { atol: 1e-7 });
        const ms = [0, 1, 2, 3].map((p) => sig((0.5 * xv[p] + 0.5 * xv[4 + p]) / 2));
        assertClose(await arr(spatial), ms, { atol: 1e-6 });
        assertClose(await arr(y), xv.map((v, i) => 0.5 * v * ms[i % 4]), { atol: 1e-6 });
        // tapping the max map's centre instead: Ms = sigmoid(max_c x / 2)
        const w2 = new Array(2 * 49).fill(0);
        w2[49 + 24] = 1;
        setParams(cbam, { "spatialConv.weight": w2 });
        const ms2 = [0, 1, 2, 3].map((p) => sig(Math.max(0.5 * xv[p], 0.5 * xv[4 + p])));
        assertClose(await arr(cbam.forwardWithAttention(x).spatial), ms2, { atol: 1e-6 });
        expect(cbam.numParameters()).toBe(2 + 1 + 2 + 2 + 98 + 1);
      } finally {
        cbam.dispose();
      }
    }),
  );

  test(
    "BAM by hand: Mc = fc2's bias [1, -2], Ms = out's bias 0.5: sum gives x (1 + sigmoid(Mc + Ms)), product x (1 + sigmoid(Mc Ms))",
    scoped(async () => {
      const xv = [1, 2, 3, 4, /* channel 1 */ -1, 0, 5, 2];
      for (const combine of ["sum", "product"] as const) {
        const bam = new s.BAM(2, { r: 2, dilation: 1, combine, device: "cpu" });
        try {
          setAll(bam, { "fc2.bias": [1, -2], "out.bias": [0.5] });
          const x = s.tensor(xv, { shape: [1, 2, 2, 2], device: "cpu" });
          const { y, attention, channel, spatial } = bam.forwardWithAttention(x);
          const f = (c: number) => sig(combine === "sum" ? c + 0.5 : c * 0.5);
          assertClose(await arr(channel), [1, -2], { atol: 1e-7 });
          assertClose(await arr(spatial), [0.5, 0.5, 0.5, 0.5], { atol: 1e-7 });
          const att = [1, 1, 1, 1, -2, -2, -2, -2].map(f);
          assertClose(await arr(attention), att, { atol: 1e-6 });
          assertClose(await arr(y), xv.map((v, i) => v * (1 + att[i])), { atol: 1e-6 });
        } finally {
          bam.dispose();
        }
      }
    }),
  );

  test(
    "ViTAttention: y equals the composed softmax(q k^T / sqrt(Dh)) v; maps are row-stochastic; FLOPs by hand",
    scoped(async () => {
      const m = new s.ViTAttention(8, 2, { seed: 3, device: "cpu", dtype: "f64" });
      try {
        const [B, T, D, H, Dh] = [2, 5, 8, 2, 4];
        const x = s.randn([B, T, D], { seed: 4, device: "cpu", dtype: "f64" });
        const { y, attention } = m.forwardWithAttention(x);
        const qkv = x.matmul(m.qkv.weight).add(m.qkv.bias!).reshape([B, T, 3, H, Dh]).permute([
          2,
          0,
          3,
          1,
          4,
        ]);
        const [q, k, v] = [0, 1, 2].map((i) => qkv.slice([i])); // (B, H, T, Dh)
        const p = q.matmul(k.transpose(2, 3)).mul(1 / Math.sqrt(Dh)).softmax(-1); // (B, H, T, T)
        const o = p.matmul(v).transpose(1, 2).reshape([B, T, D]);
        const want = o.matmul(m.proj.weight).add(m.proj.bias!);
        assertClose(await arr(y), await arr(want), { atol: 1e-12, rtol: 1e-10 });
        assertClose(await arr(attention), await arr(p), { atol: 1e-12 });
        assertClose(await arr(attention.sum(-1)), new Array(B * H * T).fill(1), { atol: 1e-12 });
        expect(attention.requiresGrad).toBe(false);
        // qkv 10 (2*8*24 + 24), scores + softmax + weighted sum 2*2*25 (4*4 + 5), proj 10 (2*8*8 + 8)
        expect(m.flops([B, T, D])).toBe(10 * 408 + 100 * 21 + 10 * 136);
      } finally {
        m.dispose();
      }
    }),
  );

  test(
    "attentionRollout by hand: heads averaged, identity added, rows renormalised, layers multiplied",
    scoped(async () => {
      for (const device of ["cpu", "webgpu"] as const) {
        if (device === "webgpu") requireGpu();
        // layer 1, two heads: mean [[0.5, 0.5], [1, 0]] + I -> [[0.75, 0.25], [0.5, 0.5]]
        const l1 = s.tensor([[[[1, 0], [1, 0]], [[0, 1], [1, 0]]]], { device });
        // layer 2, fused: [[0, 1], [0, 1]] + I -> [[0.5, 0.5], [0, 1]]
        const l2 = s.tensor([[[0, 1], [0, 1]]], { device });
        const r = s.attentionRollout([l1, l2]); // A2 A1
        expect(r.shape).toEqual([1, 2, 2]);
        assertClose(await arr(r), [0.625, 0.375, 0.5, 0.5], { atol: 1e-6 });
      }
      // from a real module: rows of the rollout sum to 1
      const m = new s.ViTAttention(8, 2, { seed: 1, device: "cpu" });
      try {
        const a = m.forwardWithAttention(s.randn([1, 6, 8], { seed: 2, device: "cpu" })).attention;
        const r = s.attentionRollout([a, a, a]);
        assertClose(await arr(r.sum(-1)), new Array(6).fill(1), { atol: 1e-6 });
      } finally {
        m.dispose();
      }
    }),
  );

  test(
    "forward equals forwardWithAttention's y for every module",
    scoped(async () => {
      for (const c of CASES.slice(2)) {
        const m = c.build({ device: "cpu", dtype: "f32" });
        try {
          const x = s.randn(c.shape, { seed: 5, device: "cpu" });
          const withAtt = (m as unknown as { forwardWithAttention(x: Tensor): { y: Tensor } })
            .forwardWithAttention(x);
          assertClose(await arr(m.forward(x)), await arr(withAtt.y), { atol: 0, rtol: 0 });
        } finally {
          m.dispose();
        }
      }
    }),
  );

  test(
    "bad input throws a VisionError naming what is wrong",
    scoped(() => {
      const o = { device: "cpu" as const };
      const se = new s.SE(16, { r: 4, ...o }), nl = new s.NonLocal(4, o), vit = new s.ViTAttention(8, 2, o);
      const conv = new s.Conv2d(3, 4, 5, o);
      try {
        const bad: [() => unknown, string][] = [
          [
            () => se.forward(s.zeros([1, 8, 4, 4], o)),
            "SE: x [1, 8, 4, 4] has 8 channels but the module was built for 16",
          ],
          [() => se.forward(s.zeros([8, 16], o)), "SE: x must be (N, C, H, W)"],
          [() => se.forward(s.zeros([1, 16, 2, 2], { ...o, dtype: "i32" })), "SE: x must be a float tensor"],
          [() => new s.SE(8), "SE: the reduction r = 16 is larger than the channels C = 8"],
          [() => new s.SE(8, { r: 0 }), "SE: r must be an integer >= 1, got 0"],
          [() => new s.CBAM(4, { r: 8 }), "CBAM: the reduction r = 8 is larger than the channels C = 4"],
          [
            () => new s.CBAM(32, { kernel: 4 }),
            "CBAM: the spatial kernel must be a positive odd integer, got 4",
          ],
          [() => new s.BAM(4, { r: 5 }), "BAM: the reduction r = 5 is larger than the channels C = 4"],
          [() => new s.BAM(16, { combine: "max" as "sum" }), 'BAM: combine must be "sum"'],
          [() => new s.ECA(16, { k: 4 }), "ECA: the kernel size k must be a positive odd integer"],
          [() => new s.ECA(16, { k: 0 }), "ECA: the kernel size k must be a positive odd integer"],
          [() => new s.ECA(0), "ECA: channels must be an integer >= 1, got 0"],
          [
            () => nl.forwardWithAttention(s.zeros([1, 4, 3, 3], o), [3, 0]),
            "NonLocal: the query pixel [3, 0] is outside the 3x3",
          ],
          [() => nl.forward(s.zeros([1, 3, 3, 3], o)), "NonLocal: x [1, 3, 3, 3] has 3 channels"],
          [() => new s.Conv2d(3, 4, 3, { groups: 2 }), "Conv2d: groups = 2 must divide inChannels (3)"],
          [() => new s.Conv2d(3, 4, 0), "Conv2d: kernel must be an integer >= 1, got 0"],
          [() => new s.Conv2d(3, 4, 3, { padding: -1 }), "Conv2d: padding must be an integer >= 0, got -1"],
          [() => conv.forward(s.zeros([1, 3, 2, 2], o)), "Conv2d: the kernel 5x5"],
          [() => se.flops([1, 8, 4, 4]), "SE: the shape [1, 8, 4, 4] has 8 channels, the module 16"],
          [() => new s.ViTAttention(10, 3), "ViTAttention: dim 10 is not a multiple of heads 3"],
          [() => vit.forward(s.zeros([1, 4, 6], o)), "ViTAttention: x must be (B, T, 8) tokens"],
          [() => s.attentionRollout([]), "attentionRollout: needs at least one layer's attention map"],
          [
            () => s.attentionRollout([s.zeros([1, 3, 4], o)]),
            "attentionRollout: layer 0's map must be float (B, H, T, T) or (B, T, T)",
          ],
          [
            () => s.attentionRollout([s.zeros([1, 3, 3], o), s.zeros([1, 2, 4, 4], o)]),
            "attentionRollout: layer 1's map",
          ],
        ];
        for (const [fn, msg] of bad) {
          let err: Error | null = null;
          try {
            fn();
          } catch (e) {
            err = e as Error;
          }
          expect(err, `expected an error containing: ${msg}`).not.toBeNull();
          expect(err!.message).toContain(msg);
          expect(["VisionError", "ConvError"]).toContain(err!.name);
        }
      } finally {
        for (const m of [se, nl, vit, conv]) m.dispose();
      }
    }),
  );
});
