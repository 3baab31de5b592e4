// WebGPU tests run on the webgpu device unconditionally: without an adapter they fail with its notice.
import { describe, expect, test } from "vitest";
import * as s from "../../mod.ts";
import type { Tensor } from "../../mod.ts";
import { assertClose, leakCheck, requireGpu, scoped } from "../../test/helpers.ts";

leakCheck();

const arr = async (t: Tensor) => Array.from(await t.toArray());
const f64 = { device: "cpu" as const, dtype: "f64" as const };
const GTOL = { atol: 2e-3, rtol: 2e-3 };

/** xz and the parameters (float64 on cpu), in mambaInner's argument order. */
function inputs(Bn: number, L: number, ED: number, N: number, R: number, W: number, bias: boolean) {
  return {
    xz: s.randn([Bn, L, 2 * ED], { seed: 1, ...f64 }),
    convWeight: s.randn([ED, W], { seed: 2, std: 0.5, ...f64 }),
    convBias: bias ? s.randn([ED], { seed: 3, std: 0.5, ...f64 }) : null,
    xProjWeight: s.randn([ED, R + 2 * N], { seed: 4, std: 0.3, ...f64 }),
    dtProjWeight: s.randn([R, ED], { seed: 5, std: 0.5, ...f64 }),
    dtProjBias: s.rand([ED], { seed: 6, low: -4, high: -2, ...f64 }),
    ALog: s.rand([ED, N], { seed: 7, low: -1, high: 1, ...f64 }),
    D: s.randn([ED], { seed: 8, ...f64 }),
  };
}

/** y and every gradient of sum(y * wy) for one version on one device. */
async function run(
  x: ReturnType<typeof inputs>,
  device: "cpu" | "webgpu",
  version: "fused" | "composed",
): Promise<number[][]> {
  const leaves: Record<string, Tensor | null> = {};
  for (const [k, v] of Object.entries(x)) {
    if (!v) {
      leaves[k] = null;
      continue;
    }
    const t = (await s.cast(v, device === "cpu" ? "f64" : "f32").to(device)).detach();
    t.requiresGrad = true;
    leaves[k] = t;
  }
  const { xz, ...p } = leaves as Record<string, Tensor>;
  const y = s.mambaInner(xz, { ...p, convBias: leaves.convBias } as s.MambaInnerParams, { version });
  const wy = await s.cast(s.randn(y.shape, { seed: 9, ...f64 }), y.dtype).to(device);
  y.mul(wy).sum().backward();
  const live = Object.values(leaves).filter((t): t is Tensor => !!t);
  const out = [await arr(y), ...(await Promise.all(live.map(async (t) => await arr(t.grad!))))];
  live.forEach((t) => t.zeroGrad());
  return out;
}

describe("mambaInner: the fused node equals the composition of the ops", () => {
  // L = 300: the scan's v2 (and bwd v2 with dz written into the (B, L, 2 ED) gradient); L = 37: v1 forward
  const cases: [number, number, number, number, number, number, boolean][] = [
    [2, 300, 8, 4, 2, 4, true],
    [1, 37, 12, 16, 1, 3, false],
    [2, 64, 4, 3, 1, 1, true],
  ];
  for (const [Bn, L, ED, N, R, W, bias] of cases) {
    test(
      `B ${Bn}, L ${L}, ED ${ED}, N ${N}, R ${R}, W ${W}${bias ? ", conv bias" : ""}: y and every gradient`,
      scoped(async () => {
        requireGpu();
        const x = inputs(Bn, L, ED, N, R, W, bias);
        const ref = await run(x, "cpu", "composed"); // float64, each op its own node
        const composed = await run(x, "webgpu", "composed");
        const fused = await run(x, "webgpu", "fused");
        const names = ["y", "xz", "convWeight", ...(bias ? ["convBias"] : []), "xProjWeight", "dtProjWeight"]
          .concat(["dtProjBias", "ALog", "D"]);
        names.forEach((n, i) => {
          for (const [what, got] of [["fused", fused], ["composed", composed]] as const) {
            try {
              assertClose(got[i], ref[i], GTOL);
            } catch (e) {
              throw new Error(`${what} ${n}: ${(e as Error).message}`);
            }
          }
        });
      }),
    );
  }

  test(
    "the scan's packed operands, kept for the backward, are released with the graph (used or not)",
    scoped(async () => {
      requireGpu();
      const x = inputs(1, 256, 8, 4, 1, 3, false);
      const leaves = await Promise.all(
        [x.xz, x.convWeight, x.xProjWeight, x.dtProjWeight, x.dtProjBias, x.ALog, x.D].map(async (t) => {
          const g = (await s.cast(t, "f32").to("webgpu")).detach();
          g.requiresGrad = true;
          return g;
        }),
      );
      const [xz, cw, xw, dw, db, al, dk] = leaves;
      const p = { convWeight: cw, xProjWeight: xw, dtProjWeight: dw, dtProjBias: db, ALog: al, D: dk };
      const inUse = () => s.memory("webgpu").bytesInUse;
      const before = inUse();
      // no backward: disposing the output frees the node and its textures
      const y0 = s.mambaInner(xz, p, { version: "fused" });
      expect(inUse()).toBeGreaterThan(before);
      y0.dispose();
      expect(inUse()).toBe(before);
      // with a backward (which packs only dout into the kept texture): the same gradients as the composition
      const fused = s.mambaInner(xz, p, { version: "fused" });
      // a readback (the batch submits: freed buffers return to the pool), then allocations between the
      // forward and the backward: none may land in what the node kept
      await fused.toArray();
      const junk = [2048, 2048, 2048, 8 * 7, 8 * 7].map((n) => s.full([n], 1e6));
      fused.sum().backward();
      junk.forEach((t) => t.dispose());
      const gFused = await Promise.all(leaves.map((t) => arr(t.grad!)));
      leaves.forEach((t) => t.zeroGrad());
      fused.dispose();
      const composed = s.mambaInner(xz, p, { version: "composed" });
      composed.sum().backward();
      const gComposed = await Promise.all(leaves.map((t) => arr(t.grad!)));
      leaves.forEach((t) => t.zeroGrad());
      composed.dispose();
      gFused.forEach((g, i) => assertClose(g, gComposed[i], GTOL));
      leaves.forEach((t) => t.dispose());
    }),
  );

  test(
    "gradcheck of the fused node on WebGPU (f32 analytic against float64 differences)",
    scoped(async () => {
      requireGpu();
      const x = inputs(1, 6, 4, 2, 1, 3, true);
      const g = await Promise.all(Object.values(x).map(async (t) => await s.cast(t!, "f32").to("webgpu")));
      await s.gradcheck(
        (xz, cw, cb, xw, dw, db, al, dk) =>
          s.mambaInner(xz, {
            convWeight: cw,
            convBias: cb,
            xProjWeight: xw,
            dtProjWeight: dw,
            dtProjBias: db,
            ALog: al,
            D: dk,
          }), // "auto": fused for the analytic gradient on webgpu; gradcheck's float64 differences compose
        g,
        { atol: 3e-3, rtol: 2e-2, eps: 1e-3 },
      );
    }),
  );

  test(
    "version checks and bad shapes",
    scoped(() => {
      const x = inputs(1, 4, 4, 2, 1, 3, true);
      const { xz, ...p } = x;
      expect(() => s.mambaInner(xz, p, { version: "fused" })).toThrow(
        'mambaInner: version "fused" runs on webgpu in f32 with a conv width up to 8',
      );
      expect(() => s.mambaInner(xz, p, { version: "v2" as never })).toThrow(
        'mambaInner: version must be "auto", "fused" or "composed", got "v2"',
      );
      expect(() => s.mambaInner(xz.slice([null, null, [0, 6]]), p)).toThrow(
        "mambaInner: xz must be (B, L, 2 ED) with ED = 4",
      );
    }),
  );
});
