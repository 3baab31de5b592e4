// Lines longer than one shader invocation may loop (lavapipe silently ends an invocation's loops after
// 65535 iterations): every core op that loops over a length must split the work and stay exact.
import { describe, test } from "vitest";
import * as s from "../mod.ts";
import { compareBackends, data, leakCheck, scoped, TOL } from "./helpers.ts";

leakCheck();

const cpu = (shape: number[], seed: number, scale = 1) =>
  s.tensor(data(shape.reduce((a, b) => a * b, 1), seed, scale), { shape, device: "cpu" });

describe("ops over lines past the 65535-iteration loop cap", () => {
  test(
    "cumsum, sum, max, argmax of 70001-long lines",
    scoped(async () => {
      const x = cpu([2, 70001], 1);
      await compareBackends((t) => s.cumsum(t, 1), [x], { atol: 1e-3, rtol: 1e-5 });
      await compareBackends((t) => s.sum(t, 1), [x], { atol: 1e-3, rtol: 1e-5 });
      await compareBackends((t) => s.max(t, 1), [x], TOL.f32);
      await compareBackends((t) => s.argmax(t, 1), [x], TOL.i32);
      await compareBackends((t) => s.argmax(t), [x], TOL.i32);
      const withNaN = s.tensor(Array.from({ length: 70001 }, (_, i) => (i === 69999 ? NaN : i % 7)), {
        device: "cpu",
      });
      await compareBackends((t) => s.argmax(t), [withNaN], TOL.i32);
    }),
  );

  test(
    "softmax, logSumExp, layerNorm and rmsNorm of 30000- and 70001-long rows",
    scoped(async () => {
      for (const n of [30000, 70001]) {
        const x = cpu([2, n], n, 5);
        await compareBackends((t) => s.softmax(t), [x], { atol: 1e-8, rtol: 1e-4 });
        await compareBackends((t) => s.logSumExp(t, -1, true), [x], { atol: 1e-5, rtol: 1e-5 });
        await compareBackends((t) => s.layerNorm(t), [x], { atol: 1e-4, rtol: 1e-4 });
        await compareBackends((t) => s.rmsNorm(t), [x], { atol: 1e-4, rtol: 1e-4 });
      }
    }),
  );

  test(
    "scatterAdd over 70001 indices and the long-row backward",
    scoped(async () => {
      const src = cpu([70001, 2], 3);
      const idx = s.tensor(Array.from({ length: 70001 }, (_, i) => (i * 7) % 5), {
        dtype: "i32",
        device: "cpu",
      });
      await compareBackends((a, b) => s.scatterAdd(a, b, 5), [src, idx], { atol: 1e-3, rtol: 1e-5 });
      const row = cpu([1, 40000], 4);
      await compareBackends(
        (t) => {
          const p = s.param(t.contiguous());
          p.softmax().mul(t).sum().backward();
          const g = p.grad!.mul(1); // tracked by the scope, unlike the param and its .grad
          p.grad!.dispose();
          p.dispose();
          return g;
        },
        [row],
        { atol: 1e-8, rtol: 1e-3 },
      );
    }),
  );
});
