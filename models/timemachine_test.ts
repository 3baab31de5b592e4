import { describe, expect, test } from "vitest";
import * as s from "../mod.ts";
import type { Tensor } from "../mod.ts";
import { TimeMachine } from "./timemachine.ts";
import { assertClose, leakCheck, requireGpu, scoped } from "../test/helpers.ts";

leakCheck();

const arr = async (t: Tensor) => Array.from(await t.toArray());
const small = { seqLen: 12, predLen: 5, n1: 8, n2: 4, dState: 3 };

describe("TimeMachine", () => {
  test(
    "parameters: four Mamba blocks of the right widths; (B, L, M) -> (B, H, M)",
    scoped(() => {
      const ci = new TimeMachine({ ...small, channels: 3, seed: 1, device: "cpu" });
      const mix = new TimeMachine({
        ...small,
        channels: 3,
        seed: 1,
        device: "cpu",
        channelIndependent: false,
      });
      const widths = (m: TimeMachine) => [m.mamba1, m.mamba2, m.mamba3, m.mamba4].map((b) => b.dims.D);
      expect(widths(ci)).toEqual([1, 4, 8, 1]);
      expect(widths(mix)).toEqual([3, 4, 8, 3]);
      const x = s.randn([2, 12, 3], { seed: 2, device: "cpu" });
      expect(ci.forward(x).shape).toEqual([2, 5, 3]);
      expect(mix.forward(x).shape).toEqual([2, 5, 3]);
      expect(ci.namedParameters().map(([n]) => n).filter((n) => !n.startsWith("mamba"))).toEqual([
        "lin1.weight",
        "lin1.bias",
        "lin2.weight",
        "lin2.bias",
        "lin3.weight",
        "lin3.bias",
        "lin4.weight",
        "lin4.bias",
        "revinWeight",
        "revinBias",
      ]);
      ci.dispose();
      mix.dispose();
    }),
  );

  test(
    "channel independence: changing one input channel changes only that channel's forecast",
    scoped(async () => {
      const M = 3, o = { device: "cpu" as const, dtype: "f64" as const };
      const x = s.randn([2, 12, M], { ...o, seed: 3 });
      const bump = s.tensor(
        Array.from({ length: 2 * 12 * M }, (_, i) => (i % M === 1 ? 0.5 * Math.sin(i) : 0)),
        { ...o, shape: [2, 12, M] },
      );
      for (const channelIndependent of [true, false]) {
        const m = new TimeMachine({ ...small, channels: M, seed: 4, channelIndependent, ...o });
        const a = await arr(m.forward(x)), b = await arr(m.forward(x.add(bump)));
        const moved = [0, 1, 2].map((c) => a.some((v, i) => i % M === c && Math.abs(v - b[i]) > 1e-9));
        // independent: only channel 1 moves; mixing: the other channels see channel 1 too
        expect(moved).toEqual(channelIndependent ? [false, true, false] : [true, true, true]);
        m.dispose();
      }
    }),
  );

  test(
    "instance normalisation: the forecast of a x + b is a forecast(x) + b per channel",
    scoped(async () => {
      const o = { device: "cpu" as const, dtype: "f64" as const };
      const x = s.randn([3, 12, 2], { ...o, seed: 6 });
      const a = s.tensor([3, 0.5], o), b = s.tensor([-7, 100], o);
      for (const revin of [true, false]) {
        const m = new TimeMachine({ ...small, channels: 2, seed: 5, revin, ...o });
        if (revin) {
          // a trained affine map: the statistics still factor out
          m.revinWeight!.storage.data!.set([1.5, 0.25]);
          m.revinBias!.storage.data!.set([0.3, -2]);
        }
        const want = await arr(m.forward(x).mul(a).add(b));
        const got = await arr(m.forward(x.mul(a).add(b)));
        assertClose(got, want, { atol: 1e-4, rtol: 1e-5 }); // up to the variance floor (1e-5)
        m.dispose();
      }
    }),
  );

  test(
    "gradients: every parameter's gradient equals float64 central differences (cpu); WebGPU equals cpu",
    scoped(async () => {
      const o = { device: "cpu" as const, dtype: "f64" as const };
      for (const channelIndependent of [true, false]) {
        const m = new TimeMachine({
          seqLen: 6,
          predLen: 2,
          channels: 2,
          n1: 4,
          n2: 3,
          dState: 2,
          seed: 7,
          channelIndependent,
          ...o,
        });
        m.revinWeight!.storage.data!.set([1.2, 0.8]); // away from the initial point
        const x = s.randn([2, 6, 2], { ...o, seed: 8 }), w = s.randn([2, 2, 2], { ...o, seed: 9 });
        const loss = () => s.noGrad(() => s.tidy(() => m.forward(x).mul(w).sum()));
        m.forward(x).mul(w).sum().backward();
        for (const [name, p] of m.namedParameters()) {
          if (!p.grad) throw new Error(`${name} got no gradient`);
          const g = await arr(p.grad);
          const data = p.storage.data as Float64Array;
          for (const i of new Set([0, Math.floor(p.size / 2), p.size - 1])) {
            const keep = data[p.offset + i], h = 1e-6;
            data[p.offset + i] = keep + h;
            const up = await loss().item();
            data[p.offset + i] = keep - h;
            const down = await loss().item();
            data[p.offset + i] = keep;
            const numeric = (up - down) / (2 * h);
            if (!(Math.abs(g[i] - numeric) <= 1e-6 + 1e-4 * Math.abs(numeric))) {
              throw new Error(
                `${name}[${i}]: analytic ${g[i]}, numeric ${numeric} (ci ${channelIndependent})`,
              );
            }
          }
        }
        m.dispose();
      }
      requireGpu();
      const run = async (device: "cpu" | "webgpu") => {
        const net = new TimeMachine({ ...small, channels: 2, seed: 10, device });
        const x = s.randn([3, 12, 2], { seed: 11, device });
        const y = net.forward(x);
        const w = s.randn(y.shape, { seed: 12, device });
        y.mul(w).sum().backward();
        const out = {
          y: await arr(y),
          grads: await Promise.all(net.parameters().map(async (p) => await arr(p.grad!))),
        };
        net.dispose();
        return out;
      };
      const c = await run("cpu"), g = await run("webgpu");
      assertClose(g.y, c.y, { atol: 2e-3, rtol: 6e-4 });
      const names = new TimeMachine({ ...small, channels: 2, device: "cpu" }).namedParameters();
      names.forEach(([n, p], i) => {
        p.dispose();
        try {
          assertClose(g.grads[i], c.grads[i], { atol: 2e-3, rtol: 3e-3 });
        } catch (e) {
          throw new Error(`${n}: ${(e as Error).message}`);
        }
      });
    }),
  );

  test(
    "dropout is active in train mode only",
    scoped(async () => {
      const m = new TimeMachine({ ...small, channels: 1, dropout: 0.5, seed: 13, device: "cpu" });
      const x = s.randn([2, 12, 1], { seed: 14, device: "cpu" });
      const t1 = await arr(m.forward(x)), t2 = await arr(m.forward(x));
      expect(t1).not.toEqual(t2); // fresh masks
      m.eval();
      expect(await arr(m.forward(x))).toEqual(await arr(m.forward(x)));
      m.dispose();
    }),
  );

  test(
    "bad inputs",
    scoped(() => {
      const m = new TimeMachine({ ...small, channels: 2, device: "cpu" });
      expect(() => m.forward(s.zeros([2, 11, 2], { device: "cpu" }))).toThrow(
        "TimeMachine: x must be (B, L, M) with L = 12, M = 2, got tensor [2, 11, 2] f32 on cpu",
      );
      expect(() => new TimeMachine({ ...small, channels: 0 })).toThrow(
        "TimeMachine: channels must be a positive integer, got 0",
      );
      expect(() => new TimeMachine({ ...small, channels: 1, dropout: 1 })).toThrow(
        "TimeMachine: dropout must be in [0, 1), got 1",
      );
      m.dispose();
    }),
  );
});
