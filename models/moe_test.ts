import { describe, expect, test } from "vitest";
import * as s from "../mod.ts";
import type { Tensor } from "../mod.ts";
import { assertClose, GPU, leakCheck, requireGpu, scoped } from "../test/helpers.ts";
import { gpu } from "../runtime/device.ts";

leakCheck();

const DEVICES = GPU ? ["cpu", "webgpu"] as const : ["cpu"] as const;

/** y, auxLoss and every gradient of sum(y * cot) + auxLoss by one path. */
async function run(moe: s.MoE, x: Tensor, path: "grouped" | "dense") {
  return await s.tidy(async () => {
    const xl = x.detach();
    xl.requiresGrad = true;
    const out = moe.forwardAux(xl, path);
    const cot = s.randn(out.y.shape, { seed: 9, device: x.device });
    out.y.mul(cot).sum().add(out.auxLoss).backward();
    const grads = [xl, moe.router.weight, moe.w1, moe.w2, moe.w3].map((t) => t.grad!.toArray());
    const res = {
      y: await out.y.toArray(),
      aux: await out.auxLoss.item(),
      load: Array.from(await out.load.toArray()),
      dropped: await out.dropped.item(),
      grads: await Promise.all(grads),
    };
    for (const p of [xl, ...moe.parameters()]) p.zeroGrad();
    return res;
  });
}

describe("SwiGLU", () => {
  test(
    "equals silu(x W1) * (x W3) W2 on both backends",
    scoped(async () => {
      for (const device of DEVICES) {
        const mlp = new s.SwiGLU(6, 10, { seed: 3, device });
        const x = s.randn([2, 3, 6], { seed: 4, device });
        const want = x.matmul(mlp.w1.weight).silu().mul(x.matmul(mlp.w3.weight)).matmul(mlp.w2.weight);
        const y = mlp.forward(x);
        expect(y.shape).toEqual([2, 3, 6]);
        assertClose(await y.toArray(), await want.toArray(), { atol: 1e-5, rtol: 1e-5 });
        expect(mlp.namedParameters().map(([n]) => n)).toEqual(["w1.weight", "w2.weight", "w3.weight"]);
        mlp.dispose();
      }
    }),
  );
});

describe("MoE", () => {
  test(
    "grouped (blocks, exact capacity) equals dense: output, aux loss, load and every gradient",
    scoped(async () => {
      for (const device of DEVICES) {
        // blocks of 32 and of 4 rows, and capacity slots with capacity T (E / K = 3: exact)
        const variants = [{}, { blockRows: 4, renormalize: true }, { capacityFactor: 3 }, {
          capacityFactor: 3,
          renormalize: true,
        }];
        for (const v of variants) {
          const moe = new s.MoE(8, 12, 6, 2, { seed: 5, device, auxLossCoef: 0.5, ...v });
          const x = s.randn([3, 7, 8], { seed: 6, device }); // 21 tokens
          const g = await run(moe, x, "grouped"), d = await run(moe, x, "dense");
          assertClose(g.y, d.y, { atol: 1e-5, rtol: 1e-4 });
          expect(g.aux).toBeCloseTo(d.aux, 6);
          expect(g.load).toEqual(d.load);
          expect(g.load.reduce((a, b) => a + b)).toBe(42);
          expect(g.dropped).toBe(0);
          g.grads.forEach((gg, k) => assertClose(gg, d.grads[k], { atol: 1e-5, rtol: 1e-4 }));
          moe.dispose();
        }
      }
    }),
  );

  test(
    "the aux loss is coef E sum_e f_e P_e with f_e counting every choice",
    scoped(async () => {
      const moe = new s.MoE(4, 4, 4, 2, { seed: 1, device: "cpu", auxLossCoef: 1 });
      moe.router.weight.dispose();
      moe.router.weight = s.param(s.zeros([4, 4], { device: "cpu" })); // uniform p: ties, lower index first
      const { auxLoss, load } = moe.forwardAux(s.randn([5, 4], { seed: 2, device: "cpu" }));
      expect(Array.from(await load.toArray())).toEqual([5, 5, 0, 0]);
      expect(await auxLoss.item()).toBeCloseTo(4 * (1 * 0.25 + 1 * 0.25), 12); // f = [1, 1, 0, 0], P = 1/4
      moe.dispose();
    }),
  );

  test(
    "a capacity below the load drops choices, counted, on both backends alike",
    scoped(async () => {
      const out: number[][] = [];
      for (const device of DEVICES) {
        const moe = new s.MoE(8, 8, 4, 2, { seed: 7, device, capacityFactor: 0.5 });
        const r = moe.forwardAux(s.randn([32, 8], { seed: 8, device }));
        const dropped = await r.dropped.item();
        const load = Array.from(await r.load.toArray());
        expect(dropped).toBe(load.reduce((a, e) => a + Math.max(0, e - 8), 0)); // C = 0.5 * 32 * 2 / 4
        out.push(Array.from(await r.y.toArray()));
        moe.dispose();
      }
      if (out.length === 2) assertClose(out[1], out[0], { atol: 1e-5, rtol: 1e-4 });
    }),
  );

  test(
    "gradcheck through the input, the router and the experts (both paths, with the aux loss)",
    scoped(async () => {
      const cases = [["grouped", { blockRows: 2 }], ["grouped", { capacityFactor: 2 }], [
        "dense",
        {},
      ]] as const;
      for (const [path, v] of cases) {
        const moe = new s.MoE(3, 4, 4, 2, { seed: 11, device: "cpu", dtype: "f64", auxLossCoef: 1, ...v });
        const fn = (x: Tensor, wr: Tensor, w1: Tensor, w2: Tensor, w3: Tensor) => {
          moe.router.weight = wr;
          Object.assign(moe, { w1, w2, w3 });
          const { y, auxLoss } = moe.forwardAux(x, path);
          return s.concat([y.reshape([-1]), auxLoss.reshape([1])]);
        };
        const own = [moe.router.weight, moe.w1, moe.w2, moe.w3];
        const x = s.randn([5, 3], { seed: 12, device: "cpu", dtype: "f64" });
        await s.gradcheck(fn, [x, ...own]);
        [moe.router.weight, moe.w1, moe.w2, moe.w3] = own;
        moe.dispose();
      }
    }),
  );

  test(
    "bad input throws named errors",
    scoped(() => {
      expect(() => new s.MoE(8, 8, 4, 5)).toThrow("MoE: topK 5 is more than the 4 experts");
      expect(() => new s.MoE(8, 0, 4, 2)).toThrow("MoE: hidden must be a positive integer, got 0");
      expect(() => new s.MoE(8, 8, 4, 2, { capacityFactor: 0 })).toThrow(
        "MoE: capacityFactor must be positive",
      );
      expect(() => new s.MoE(8, 8, 4, 2, { blockRows: 2.5 })).toThrow(
        "MoE: blockRows must be a positive integer, got 2.5",
      );
      const moe = new s.MoE(8, 8, 4, 2, { device: "cpu" });
      expect(() => moe.forward(s.zeros([3, 7], { device: "cpu" }))).toThrow(
        "MoE: input tensor [3, 7] f32 on cpu does not end in dim 8",
      );
      // deno-lint-ignore no-explicit-any
      expect(() => moe.forwardAux(s.zeros([3, 8], { device: "cpu" }), "sparse" as any)).toThrow(
        'MoE: path must be "auto", "grouped" or "dense", got "sparse"',
      );
      moe.dispose();
    }),
  );
});

describe("MoE path auto", () => {
  test(
    "a few tokens take the dense path (fewer dispatches than grouped), many the grouped one; values agree",
    scoped(async () => {
      requireGpu();
      const moe = new s.MoE(16, 16, 8, 2, { seed: 3, device: "webgpu" });
      const run = async (T: number, path: "auto" | "grouped" | "dense") => {
        const x = s.randn([T, 16], { seed: T, device: "webgpu" });
        await gpu().sync();
        const c0 = gpu().counters.dispatches;
        const y = s.noGrad(() => moe.forward(x, path));
        const n = gpu().counters.dispatches - c0;
        return { y: Array.from(await y.toArray()), n };
      };
      for (const T of [1, 3, 512]) {
        const [a, g, d] = [await run(T, "auto"), await run(T, "grouped"), await run(T, "dense")];
        assertClose(a.y, g.y, { atol: 1e-5, rtol: 1e-4 });
        assertClose(a.y, d.y, { atol: 1e-5, rtol: 1e-4 });
        // T (E - K) <= min(E, T K) blockRows / 2: dense for 1 and 3 tokens, grouped for 512
        expect(a.n, `T ${T}`).toBe(T < 512 ? d.n : g.n);
        if (T === 1) expect(d.n).toBeLessThan(g.n);
      }
      moe.dispose();
    }),
  );
});
