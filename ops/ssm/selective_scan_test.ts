// WebGPU tests run on the webgpu device unconditionally: without an adapter they fail with its notice.
import { describe, expect, test } from "vitest";
import * as s from "../../mod.ts";
import type { SelectiveScanGpuOptions, Tensor } from "../../mod.ts";
import { assertClose, gpu32, leakCheck, requireGpu, scoped } from "../../test/helpers.ts";
import { scanGrads } from "./selective_scan.ts";
import { gpu } from "../../runtime/device.ts";
import { texDimClass, WebGPUError } from "../../runtime/webgpu.ts";
import { env } from "../../runtime/platform.ts";

leakCheck();

/** The reference repo's fp32 tolerances; gradients looser as there (delta: rtol x5, atol x10). */
const TOL = { atol: 2e-3, rtol: 6e-4 };
const GTOL = { atol: 2e-3, rtol: 1e-3 };
const DTOL = { atol: 2e-2, rtol: 3e-3 };
const HEAVY = !!env("SEQLAB_HEAVY");

const arr = async (t: Tensor) => Array.from(await t.toArray());
const cpu = { device: "cpu" as const };

type Layout = "shared" | "var" | "group";

/**
 * Random scan inputs on cpu (f64), A in [-2, -0.1]; delta in [-3, 0.5] for use with softplus, or (`raw`)
 * in [0.01, 0.5] for use without.
 */
function inputs(
  Bn: number,
  D: number,
  L: number,
  N: number,
  layout: Layout,
  seed = 1,
  G = 2,
  raw = false,
  cLayout: Layout = layout,
) {
  const o = { ...cpu, dtype: "f64" as const };
  const shape = (l: Layout) => (l === "shared" ? [D, N] : l === "group" ? [Bn, G, N, L] : [Bn, N, L]);
  const bshape = shape(layout), cshape = shape(cLayout);
  return {
    u: s.randn([Bn, D, L], { seed, ...o }),
    delta: s.rand([Bn, D, L], { seed: seed + 1, low: raw ? 0.01 : -3, high: 0.5, ...o }),
    A: s.rand([D, N], { seed: seed + 2, low: -2, high: -0.1, ...o }),
    B: s.randn(bshape, { seed: seed + 3, ...o }),
    C: s.randn(cshape, { seed: seed + 4, ...o }),
    D: s.randn([D], { seed: seed + 5, ...o }),
    z: s.randn([Bn, D, L], { seed: seed + 6, ...o }),
    deltaBias: s.randn([D], { seed: seed + 7, std: 0.5, ...o }),
  };
}
type Inputs = ReturnType<typeof inputs>;

async function toGpu(x: Inputs): Promise<Inputs> {
  const out: Record<string, Tensor> = {};
  for (const [k, v] of Object.entries(x)) out[k] = await s.cast(v, "f32").to("webgpu");
  return out as Inputs;
}

const full = (x: Inputs) => ({ D: x.D, z: x.z, deltaBias: x.deltaBias, deltaSoftplus: true });

describe("selectiveScanRef", () => {
  test(
    "hand-computed: running sum (A = 0) and decay exp(-1), D skip, softplus, gate",
    scoped(async () => {
      const t = (v: unknown) => s.tensor(v as number[], { ...cpu, dtype: "f64" });
      const u = t([[[1, 2, 3]]]), one = t([[[1, 1, 1]]]);
      expect(await arr(s.selectiveScanRef(u, one, t([[0]]), t([[1]]), t([[2]])))).toEqual([2, 6, 12]);
      // h_t = e^-1 h_t-1 + u_t with A = -1, delta = 1; out = h + 0.5 u
      const e = Math.exp(-1);
      const [y, last] = s.selectiveScanRef(u, one, t([[-1]]), t([[1]]), t([[1]]), {
        D: t([0.5]),
        returnLastState: true,
      });
      const h = [1, 2 + e, 3 + e * (2 + e)];
      assertClose(await arr(y), h.map((v, i) => v + 0.5 * (i + 1)), { atol: 1e-12, rtol: 1e-12 });
      assertClose(await arr(last), [h[2]], { atol: 1e-12, rtol: 1e-12 });
      // delta = softplus(0 + bias ln(e - 1)) = 1 and a gate z = 0 zeroes the output
      const g = s.selectiveScanRef(u, t([[[0, 0, 0]]]), t([[0]]), t([[1]]), t([[1]]), {
        deltaBias: t([Math.log(Math.E - 1)]),
        deltaSoftplus: true,
        z: t([[[0, 1, 0]]]),
      });
      assertClose(await arr(g), [0, 3 / (1 + Math.exp(-1)), 0], { atol: 1e-12, rtol: 1e-12 });
    }),
  );

  test(
    "grouped B equals B repeated per channel; shared equals input-dependent constant in time",
    scoped(async () => {
      const x = inputs(2, 4, 9, 3, "group");
      const Brep = x.B.unsqueeze(2).expand([2, 2, 2, 3, 9]).reshape([2, 4, 3, 9]);
      const Crep = x.C.unsqueeze(2).expand([2, 2, 2, 3, 9]).reshape([2, 4, 3, 9]);
      const g = await arr(s.selectiveScanRef(x.u, x.delta, x.A, x.B, x.C, full(x)));
      const r = await arr(s.selectiveScanRef(x.u, x.delta, x.A, Brep, Crep, full(x)));
      assertClose(g, r, { atol: 1e-12, rtol: 1e-12 });
      const y = inputs(1, 3, 5, 2, "shared");
      const Bt = y.B.unsqueeze(0).unsqueeze(-1).expand([1, 3, 2, 5]);
      const Ct = y.C.unsqueeze(0).unsqueeze(-1).expand([1, 3, 2, 5]);
      assertClose(
        await arr(s.selectiveScanRef(y.u, y.delta, y.A, y.B, y.C)),
        await arr(s.selectiveScanRef(y.u, y.delta, y.A, Bt, Ct)),
        { atol: 1e-12, rtol: 1e-12 },
      );
    }),
  );
});

describe("selectiveScan on WebGPU against the reference", () => {
  const versions: [string, s.SelectiveScanGpuOptions][] = [
    ["v1", { version: "v1" }],
    ["v2 chunk 8", { version: "v2", chunkSize: 8 }],
    ["v2 chunk 12 hillis-steele", { version: "v2", chunkSize: 12, carry: "hillis-steele" }],
  ];
  const cases: [number, number, number, number, Layout, Layout, boolean][] = [
    // Bn, D, L, N, layout of B, of C, every option
    [1, 1, 1, 1, "var", "var", false],
    [2, 3, 37, 5, "var", "var", true],
    [2, 4, 64, 16, "group", "group", true],
    [1, 5, 23, 17, "shared", "shared", true],
    [2, 2, 50, 4, "var", "var", false],
    [2, 4, 30, 5, "shared", "group", true],
    [1, 3, 41, 6, "var", "shared", true],
  ];
  for (const [Bn, D, L, N, layout, cLayout, opts] of cases) {
    test(
      `B ${Bn}, D ${D}, L ${L}, N ${N}, ${layout} B, ${cLayout} C${
        opts ? ", D, z, deltaBias, softplus" : ""
      }`,
      scoped(async () => {
        const x = inputs(Bn, D, L, N, layout, Bn * 7 + L, 2, !opts, cLayout);
        const o = opts ? full(x) : {};
        const [ref, refLast] = s.selectiveScanRef(x.u, x.delta, x.A, x.B, x.C, {
          ...o,
          returnLastState: true,
        });
        const g = await toGpu(x);
        const og = opts ? full(g) : {};
        for (const [name, v] of versions) {
          const [y, last] = s.selectiveScan(g.u, g.delta, g.A, g.B, g.C, {
            ...og,
            ...v,
            returnLastState: true,
          });
          try {
            assertClose(await arr(y), await arr(ref), TOL, { actual: y.shape, expected: ref.shape });
            assertClose(await arr(last), await arr(refLast), TOL, {
              actual: last.shape,
              expected: refLast.shape,
            });
          } catch (e) {
            throw new Error(`${name}: ${(e as Error).message}`);
          }
        }
      }),
    );
  }

  test(
    "strided and offset views are read correctly",
    scoped(async () => {
      const x = inputs(3, 4, 70, 4, "var", 5, 2, true);
      const g = await toGpu(x);
      const sl = (t: Tensor) => t.slice([[1, 3]]); // offset views
      const ref = s.selectiveScanRef(sl(x.u), sl(x.delta), x.A, sl(x.B), sl(x.C));
      for (const version of ["v1", "v2"] as const) {
        const y = s.selectiveScan(sl(g.u), sl(g.delta), g.A, sl(g.B), sl(g.C), { version, chunkSize: 16 });
        assertClose(await arr(y), await arr(ref), TOL);
      }
      // a transposed A is made contiguous
      const At = x.A.transpose().contiguous().transpose();
      const y2 = s.selectiveScan(g.u, g.delta, await s.cast(At, "f32").to("webgpu"), g.B, g.C);
      assertClose(await arr(y2), await arr(s.selectiveScanRef(x.u, x.delta, x.A, x.B, x.C)), TOL);
    }),
  );
});

describe("parallel scan (v2) equals the sequential one (v1) and the reference", () => {
  // default: a few lengths including ones that are not multiples of the chunk; SEQLAB_HEAVY=1: 1 .. 65536
  const lengths = HEAVY
    ? [1, 2, 3, 5, 16, 63, 64, 255, 256, 1000, 1024, 4096, 4097, 16384, 16411, 65536]
    : [1, 7, 257, 1000, 4096];
  for (const L of lengths) {
    test(
      `L = ${L}`,
      scoped(async () => {
        const x = inputs(1, 4, L, 16, "var", L);
        const o = full(x);
        const [ref, refLast] = s.selectiveScanRef(x.u, x.delta, x.A, x.B, x.C, {
          ...o,
          returnLastState: true,
        });
        const g = await toGpu(x);
        const og = full(g);
        const [y1, l1] = s.selectiveScan(g.u, g.delta, g.A, g.B, g.C, {
          ...og,
          version: "v1",
          returnLastState: true,
        });
        const chunkSizes = [undefined, 12, 256];
        const r = await arr(ref), rl = await arr(refLast), a1 = await arr(y1), al1 = await arr(l1);
        assertClose(a1, r, TOL);
        assertClose(al1, rl, TOL);
        for (const chunkSize of chunkSizes) {
          if (chunkSize && L / chunkSize > 4096) continue; // 5000+ chunks: the carry pass dominates, no news
          const [y2, l2] = s.selectiveScan(g.u, g.delta, g.A, g.B, g.C, {
            ...og,
            version: "v2",
            chunkSize,
            returnLastState: true,
          });
          assertClose(await arr(y2), a1, TOL);
          assertClose(await arr(l2), al1, TOL);
          assertClose(await arr(y2), r, TOL);
        }
      }),
    );
  }
});

describe("loops past 65535 steps (lavapipe ends any single loop after 65535 iterations)", () => {
  test(
    "v1, v2 with one chunk, the scan's backward, the S4 recurrence and the conv backward reach step 65537",
    scoped(async () => {
      const L = 65537;
      const o = { device: "cpu" as const, dtype: "f64" as const };
      const u = s.randn([1, 1, L], { seed: 1, ...o }), dl = s.full([1, 1, L], 0.05, o);
      const A = s.full([1, 1], -0.5, o), B = s.randn([1, 1, L], { seed: 2, ...o });
      const ref = await arr(s.selectiveScanRef(u, dl, A, B, B));
      const g = await gpu32([u, dl, A, B]);
      for (const opts of [{ version: "v1" }, { version: "v2", chunkSize: 65540 }] as const) {
        const y = await arr(s.selectiveScan(g[0], g[1], g[2], g[3], g[3], opts));
        assertClose(y.slice(-3), ref.slice(-3), TOL);
      }
      const ssm = s.s4dInit("real", 1, 2, { seed: 1 });
      const rec = await arr(s.ssmRecurrence(g[0], ssm));
      const recRef = s.ssmRecurrenceRef(await u.toArray(), [1, 1, L], ssm);
      assertClose(rec.slice(-3), Array.from(recRef.slice(-3)), TOL);
      // the backward over L = 65537: checkpoints and the reverse scan split over dispatches
      const leaves = g.map((t) => {
        const c = t.detach();
        c.requiresGrad = true;
        return c;
      });
      const [yg, lg] = s.selectiveScan(leaves[0], leaves[1], leaves[2], leaves[3], leaves[3], {
        version: "v1",
        returnLastState: true,
      });
      yg.sum().add(lg.sum()).backward();
      const gr = s.selectiveScanBackwardRef(u, dl, A, B, B, {}, {
        dout: s.ones([1, 1, L], o),
        dlast: s.ones([1, 1, 1], o),
      });
      const du = await arr(leaves[0].grad!);
      assertClose([du[0], du[L / 2 | 0], du[L - 1]], [gr.du[0], gr.du[L / 2 | 0], gr.du[L - 1]], GTOL);
      assertClose(await arr(leaves[2].grad!), Array.from(gr.dA), { atol: 1, rtol: 1e-3 }); // a sum of 65537
      leaves.forEach((t) => t.zeroGrad());
      // dweight sums over all L steps
      const w = s.param(s.ones([1, 2], { device: "webgpu" }));
      s.causalConv1d(g[0], w).sum().backward();
      const want = (await arr(u)).reduce((a, v) => a + v, 0);
      expect(Math.abs((await arr(w.grad!))[1] - want)).toBeLessThan(0.05);
      w.zeroGrad();
      w.dispose();
    }),
  );
});

describe("selectiveScan backward", () => {
  const fwd = (last: boolean) => (...x: Tensor[]) => {
    const o = { D: x[5], z: x[6], deltaBias: x[7], deltaSoftplus: true };
    return last
      ? s.selectiveScan(x[0], x[1], x[2], x[3], x[4], { ...o, returnLastState: true })[1]
      : s.selectiveScan(x[0], x[1], x[2], x[3], x[4], o);
  };
  const list = (x: Inputs) => [x.u, x.delta, x.A, x.B, x.C, x.D, x.z, x.deltaBias];

  for (const layout of ["var", "shared", "group"] as const) {
    test(
      `gradcheck on cpu (float64), ${layout} B/C: output and last state`,
      scoped(async () => {
        const x = inputs(2, 4, 6, 3, layout, 3);
        for (const last of [false, true]) await s.gradcheck(fwd(last), list(x));
      }),
    );
  }

  test(
    "gradcheck on WebGPU (f32 analytic against float64 differences)",
    scoped(async () => {
      const x = inputs(1, 2, 5, 3, "var", 11);
      const g = await toGpu(x);
      await s.gradcheck(fwd(false), list(g), { atol: 2e-3, rtol: 1e-2, eps: 1e-4 });
    }),
  );

  const gradCases: [number, number, number, number, Layout, Layout][] = [
    [2, 4, 40, 5, "var", "var"],
    [1, 6, 33, 16, "group", "group"],
    [2, 3, 9, 6, "shared", "shared"],
    [2, 4, 12, 3, "shared", "group"],
    [2, 8, 300, 16, "var", "var"],
    [1, 4, 7, 4, "var", "shared"],
    [1, 4, 1, 2, "group", "group"],
  ];
  for (const [Bn, D, L, N, layout, cLayout] of gradCases) {
    for (const version of ["v1", "v2"] as const) {
      test(
        `WebGPU gradients (bwd ${version}) equal the reference's: B ${Bn}, D ${D}, L ${L}, N ${N}, ` +
          `${layout} B, ${cLayout} C`,
        scoped(async () => {
          const x = inputs(Bn, D, L, N, layout, 21, 2, false, cLayout);
          const names = ["u", "delta", "A", "B", "C", "D", "z", "deltaBias"];
          const grads = async (xs: Tensor[]) => {
            const leaves = xs.map((t) => {
              const c = t.detach();
              c.requiresGrad = true;
              return c;
            });
            const [y, last] = s.selectiveScan(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], {
              D: leaves[5],
              z: leaves[6],
              deltaBias: leaves[7],
              deltaSoftplus: true,
              returnLastState: true,
              version,
            });
            // a weighted loss on both outputs: every gradient path is exercised
            const wy = s.randn(y.shape, { seed: 1, device: y.device }),
              wl = s.randn(last.shape, { seed: 2, device: y.device });
            y.mul(wy).sum().add(last.mul(wl).sum()).backward();
            const out = await Promise.all(leaves.map(async (t) => await arr(t.grad!)));
            leaves.forEach((t) => t.zeroGrad());
            return out;
          };
          const ref = await grads(list(x).map((t) => s.cast(t, "f32")));
          const g = await grads(list(await toGpu(x)));
          names.forEach((n, i) => {
            try {
              assertClose(g[i], ref[i], n === "delta" || n === "deltaBias" ? DTOL : GTOL);
            } catch (e) {
              throw new Error(`d${n}: ${(e as Error).message}`);
            }
          });
        }),
      );
    }
  }
});

describe("channels-last: strided (B, L, D) inputs, channels-last output and gradients", () => {
  // Mamba's layout: u, delta, z (B, L, D) and B, C column slices of x_proj's (B, L, R + 2N) output, all
  // viewed as (B, D, L) / (B, N, L). D = 8 takes pack v3's vec4 loads, D = 6 its scalar ones; v2 stores
  // through strides (L = 37: a partial last texel) or, for L % 4 == 0, bwd v2 through its unpack pass (D = 6:
  // scalar stores); v1 and the cpu are moved into the layout after.
  const cases: [number, number, number, number][] = [[2, 8, 300, 16], [1, 6, 37, 4], [2, 8, 40, 5], [
    1,
    6,
    36,
    3,
  ]];
  for (const [Bn, D, L, N] of cases) {
    for (const device of ["webgpu", "cpu"] as const) {
      test(
        `B ${Bn}, D ${D}, L ${L}, N ${N} (${device}): values and every gradient equal the reference's`,
        scoped(async () => {
          const o = { ...cpu, dtype: "f64" as const };
          const R = 4;
          const base = {
            u: s.randn([Bn, L, D], { seed: 1, ...o }),
            delta: s.rand([Bn, L, D], { seed: 2, low: -3, high: 0.5, ...o }),
            z: s.randn([Bn, L, D], { seed: 3, ...o }),
            xdbl: s.randn([Bn, L, R + 2 * N], { seed: 4, ...o }),
            A: s.rand([D, N], { seed: 5, low: -2, high: -0.1, ...o }),
            D: s.randn([D], { seed: 6, ...o }),
            deltaBias: s.randn([D], { seed: 7, std: 0.5, ...o }),
          };
          const wy = s.randn([Bn, D, L], { seed: 8, ...o });
          const run = async (dev: "cpu" | "webgpu", channelsLast: boolean, version: "v1" | "v2" | "auto") => {
            const leaves = await Promise.all(
              Object.values(base).map(async (t) => {
                const c = (await s.cast(t, dev === "cpu" && device === "cpu" ? "f64" : "f32").to(dev))
                  .detach();
                c.requiresGrad = true;
                return c;
              }),
            );
            const [u, delta, z, xdbl, A, Dk, bias] = leaves;
            const T = (t: Tensor) => t.transpose(1, 2);
            const Bm = T(xdbl.slice([null, null, [R, R + N]])),
              Cm = T(xdbl.slice([null, null, [R + N, R + 2 * N]]));
            const y = s.selectiveScan(T(u), T(delta), A, Bm, Cm, {
              D: Dk,
              z: T(z),
              deltaBias: bias,
              deltaSoftplus: true,
              channelsLast,
              version,
            });
            if (channelsLast) expect(T(y).isContiguous).toBe(true);
            y.mul(await s.cast(wy, y.dtype).to(dev)).sum().backward();
            const out = [await arr(y), ...(await Promise.all(leaves.map(async (t) => await arr(t.grad!))))];
            leaves.forEach((t) => t.zeroGrad());
            return out;
          };
          const ref = await run("cpu", false, "auto");
          const got = device === "cpu" ? [await run("cpu", true, "auto")] : [
            await run("webgpu", true, "auto"),
            await run("webgpu", true, "v1"),
            await run("webgpu", true, "v2"),
            await run("webgpu", false, "auto"),
          ];
          const names = ["y", "u", "delta", "z", "xdbl", "A", "D", "deltaBias"];
          for (const g of got) {
            names.forEach((n, i) => {
              try {
                const tol = device === "cpu"
                  ? { atol: 1e-12, rtol: 1e-12 }
                  : n.startsWith("delta")
                  ? DTOL
                  : GTOL;
                assertClose(g[i], ref[i], tol);
              } catch (e) {
                throw new Error(`${n}: ${(e as Error).message}`);
              }
            });
          }
        }),
      );
    }
  }

  test(
    "gradcheck on WebGPU through channels-last views",
    scoped(async () => {
      const x = inputs(1, 4, 9, 3, "var", 31);
      const g = await toGpu(x);
      const cl = (t: Tensor) => t.transpose(1, 2).contiguous().transpose(1, 2); // same values, (B, L, D) storage
      await s.gradcheck(
        (u, delta, A, B, C, D, z, db) =>
          s.selectiveScan(u, delta, A, B, C, {
            D,
            z,
            deltaBias: db,
            deltaSoftplus: true,
            channelsLast: true,
            version: "v2",
          }),
        [cl(g.u), cl(g.delta), g.A, cl(g.B), cl(g.C), g.D, cl(g.z), g.deltaBias],
        { atol: 2e-3, rtol: 1e-2, eps: 1e-4 },
      );
    }),
  );
});

describe("selectiveScanStep", () => {
  for (const device of ["cpu", "webgpu"] as const) {
    test(
      `decoding token by token equals the full scan (output and last state), ${device}`,
      scoped(async () => {
        const [Bn, D, L, N] = [2, 4, 12, 5];
        const x = inputs(Bn, D, L, N, "group", 31);
        const g = device === "cpu" ? x : await toGpu(x);
        const [y, last] = s.selectiveScan(g.u, g.delta, g.A, g.B, g.C, { ...full(g), returnLastState: true });
        // prefill 5 tokens with the scan, then step the rest
        const pre = 5;
        const head = (t: Tensor) => t.slice([null, null, [0, pre]]);
        const hb = (t: Tensor) => t.slice([null, null, null, [0, pre]]);
        const [y0, s0] = s.selectiveScan(head(g.u), head(g.delta), g.A, hb(g.B), hb(g.C), {
          ...full(g),
          z: head(g.z),
          returnLastState: true,
        });
        let state = s0;
        const ys: Tensor[] = [y0];
        for (let t = pre; t < L; t++) {
          const at = (v: Tensor) => v.slice([null, null, t]);
          const r = s.selectiveScanStep(
            state,
            at(g.u),
            at(g.delta),
            g.A,
            g.B.slice([null, null, null, t]),
            g.C.slice([null, null, null, t]),
            {
              D: g.D,
              z: at(g.z),
              deltaBias: g.deltaBias,
              deltaSoftplus: true,
            },
          );
          ys.push(r.y.unsqueeze(-1));
          state = r.state;
        }
        const tol = device === "cpu" ? { atol: 1e-12, rtol: 1e-12 } : TOL;
        assertClose(await arr(s.concat(ys, 2)), await arr(y), tol);
        assertClose(await arr(state), await arr(last), tol);
      }),
    );
  }

  test(
    "the fused WebGPU step (scan step v1) equals the composed one; u, delta, z, B, C read through strides",
    scoped(async () => {
      const [Bn, D, N] = [3, 8, 6];
      const g = async (t: Tensor) => await s.cast(t, "f32").to("webgpu");
      const o = { ...cpu, dtype: "f64" as const };
      const st = await g(s.randn([Bn, D, N], { seed: 1, ...o }));
      const xz = await g(s.randn([Bn, 3 * D], { seed: 2, ...o })); // u, delta, z: column slices
      const bc = await g(s.randn([Bn, 2, 2 * N], { seed: 3, ...o })); // grouped B, C (G = 2): slices
      const A = await g(s.rand([D, N], { seed: 4, low: -2, high: -0.1, ...o }));
      const Dk = await g(s.randn([D], { seed: 5, ...o })), bias = await g(s.randn([D], { seed: 6, ...o }));
      const u = xz.slice([null, [0, D]]),
        dl = xz.slice([null, [D, 2 * D]]),
        z = xz.slice([null, [2 * D, 3 * D]]);
      const B = bc.slice([null, null, [0, N]]), C = bc.slice([null, null, [N, 2 * N]]);
      const Bv = bc.slice([null, 0, [0, N]]), Cs = A.unsqueeze(0).expand([Bn, D, N]); // (B, N); shared as (B, D, N)
      const cases: [Tensor, Tensor, s.SelectiveScanStepOptions][] = [
        [B, C, { D: Dk, z, deltaBias: bias, deltaSoftplus: true }],
        [Bv, Cs, { deltaSoftplus: true }],
        [Bv, Bv, {}],
      ];
      for (const [b, c, opts] of cases) {
        const f = s.selectiveScanStep(st, u, dl, A, b, c, { ...opts, version: "fused" });
        const r = s.selectiveScanStep(st, u, dl, A, b, c, { ...opts, version: "composed" });
        assertClose(await arr(f.y), await arr(r.y), TOL);
        assertClose(await arr(f.state), await arr(r.state), TOL);
      }
      const Ap = A.detach();
      Ap.requiresGrad = true;
      expect(() => s.selectiveScanStep(st, u, dl, Ap, B, C, { version: "fused" })).toThrow(
        'selectiveScanStep: version "fused" runs on webgpu in f32 with no gradient recorded',
      );
      expect(s.selectiveScanStep(st, u, dl, Ap, B, C).y.requiresGrad).toBe(true);
    }),
  );

  test(
    "gradcheck (composed from core ops) and bad shapes",
    scoped(async () => {
      const o = { ...cpu, dtype: "f64" as const };
      const st = s.randn([2, 3, 4], { seed: 1, ...o }), u = s.randn([2, 3], { seed: 2, ...o });
      const dl = s.randn([2, 3], { seed: 3, ...o }), A = s.rand([3, 4], { seed: 4, low: -1, high: 0, ...o });
      const B = s.randn([2, 4], { seed: 5, ...o }), C = s.randn([2, 4], { seed: 6, ...o });
      await s.gradcheck(
        (a, b, c, d, e, f) => s.selectiveScanStep(a, b, c, d, e, f, { deltaSoftplus: true }).y,
        [st, u, dl, A, B, C],
      );
      expect(() => s.selectiveScanStep(st, u, dl, A, s.zeros([2, 5], cpu), C)).toThrow(
        "selectiveScanStep: B must be (B, N) = [2, 4] or grouped (B, G, N) with G dividing D = 3; got [2, 5]",
      );
      expect(() => s.selectiveScanStep(st, s.zeros([3, 3], cpu), dl, A, B, C)).toThrow(
        "selectiveScanStep: u must be (B, D) = [2, 3] (from state [2, 3, 4]), got [3, 3]",
      );
    }),
  );
});

describe("bad inputs", () => {
  test(
    "mismatched D, B/C of the wrong layout, other shapes: errors name the shapes",
    scoped(() => {
      const z = (shape: number[]) => s.zeros(shape, cpu);
      const u = z([2, 4, 8]), A = z([4, 3]), B = z([2, 3, 8]);
      expect(() => s.selectiveScan(u, u, z([5, 3]), B, B)).toThrow(
        "selectiveScan: A must be (D, N) with D = 4 (from u [2, 4, 8]), got [5, 3]",
      );
      expect(() => s.selectiveScan(u, u, A, z([2, 8, 3]), B)).toThrow(
        "selectiveScan: B must be shared (D, N) = [4, 3], input-dependent (B, N, L) = [2, 3, 8] or grouped " +
          "(B, G, N, L) with G dividing D; got [2, 8, 3] (u is [2, 4, 8], A is [4, 3])",
      );
      expect(() => s.selectiveScan(u, u, A, B, z([2, 3, 3, 8]))).toThrow(
        /C must be shared .* got \[2, 3, 3, 8\]/,
      );
      expect(() => s.selectiveScan(u, z([2, 4, 7]), A, B, B)).toThrow(
        "selectiveScan: delta must have u's shape (B, D, L) = [2, 4, 8], got [2, 4, 7]",
      );
      expect(() => s.selectiveScan(u, u, A, B, B, { D: z([3]) })).toThrow(
        "selectiveScan: D must be (D) = [4] (from u [2, 4, 8]), got [3]",
      );
      expect(() => s.selectiveScan(z([4, 8]), u, A, B, B)).toThrow(
        "selectiveScan: u must be (B, D, L), got tensor [4, 8]",
      );
    }),
  );

  test(
    "A with a positive entry: thrown on cpu, reported at the next readback on WebGPU",
    scoped(async () => {
      const u = s.zeros([1, 2, 4], cpu), B = s.zeros([1, 3, 4], cpu);
      const A = s.tensor([[-1, -1, -1], [-1, 0.5, -1]], cpu);
      expect(() => s.selectiveScan(u, u, A, B, B)).toThrow(
        "selectiveScan: A[1, 1] = 0.5 is positive; A [2, 3] must be non-positive (A = -exp(A_log)) for a stable scan",
      );
      for (const version of ["v1", "v2"] as const) {
        const [ug, Ag, Bg] = await Promise.all([u, A, B].map((t) => t.to("webgpu")));
        const y = s.selectiveScan(ug, ug, Ag, Bg, Bg, { version });
        await expect(y.toArray()).rejects.toThrow(/selectiveScan: A\[1, 1\] is positive/);
      }
    }),
  );
});

describe("version options: checked the same way on both backends", () => {
  test(
    "unknown versions, bad chunk sizes and carries, and a v2 that cannot take the input throw the same error",
    scoped(async () => {
      const make = (N: number) => {
        const u = s.zeros([1, 2, 8], cpu), A = s.full([2, N], -1, cpu), B = s.zeros([2, N], cpu);
        return [u, A, B];
      };
      const cases: [s.SelectiveScanGpuOptions, number, string][] = [
        [{ version: "v3" as never }, 3, 'selectiveScan: version must be "auto", "v1" or "v2", got "v3"'],
        [
          { version: "v2", chunkSize: 6 },
          3,
          "selectiveScan: chunkSize must be a positive multiple of 4, got 6",
        ],
        [
          { carry: "blelloch" as never },
          3,
          'selectiveScan: carry must be "sequential" or "hillis-steele", got "blelloch"',
        ],
        [
          { version: "v2" },
          8193,
          'selectiveScan: version "v2" cannot take u [1, 2, 8] with N = 8193: its textures hold N <= 8192; ' +
          'use "v1" or "auto"',
        ],
      ];
      for (const [opts, N, message] of cases) {
        const [u, A, B] = make(N);
        const [ug, Ag, Bg] = await Promise.all([u, A, B].map((t) => t.to("webgpu")));
        for (const x of [[u, A, B], [ug, Ag, Bg]]) {
          const before = s.memory(x[0].device).bytesInUse;
          expect(() => s.selectiveScan(x[0], x[0], x[1], x[2], x[2], opts), x[0].device).toThrow(message);
          expect(s.memory(x[0].device).bytesInUse, `nothing left allocated on ${x[0].device}`).toBe(before);
        }
      }
    }),
  );
});

describe("fwd v2 records into the context's batch (textures from the pool, one error channel)", () => {
  // B 1, D 8, L 256, N 4, input-dependent B and C: every operand packs by copies (4L bytes = 1 KiB rows)
  const [Bn, D, L, N] = [1, 8, 256, 4];
  const setup = async () => {
    const g = await toGpu(inputs(Bn, D, L, N, "var", 41, 2, true));
    await gpu().sync();
    return g;
  };

  test(
    "no submit; aligned operands pack by copies (no pack pass); the result equals v1",
    scoped(async () => {
      const g = await setup();
      const ctx = gpu();
      const c0 = { ...ctx.counters };
      const y1 = s.selectiveScan(g.u, g.delta, g.A, g.B, g.C, { version: "v1" });
      const c1 = { ...ctx.counters };
      const y = s.selectiveScan(g.u, g.delta, g.A, g.B, g.C, { version: "v2", chunkSize: 64 });
      const c2 = ctx.counters;
      expect(c2.submits - c0.submits).toBe(0);
      // the same preparation, then v1's one pass against v2's chunk, carry and fix-up: no pack pass
      expect((c2.dispatches - c1.dispatches) - (c1.dispatches - c0.dispatches)).toBe(2);
      expect((c2.copies - c1.copies) - (c1.copies - c0.copies)).toBe(5); // u, delta, B, C in; y out
      assertClose(await arr(y), await arr(y1), TOL);
    }),
  );

  test(
    "the ledger counts the textures while the call records; emptyCache() leaves no pooled bytes",
    scoped(async () => {
      const g = await setup();
      // the textures v2 asks for: (u, delta), (B, C) and y, texel rows of L / 4, sizes rounded to classes
      const L4 = texDimClass(L / 4);
      const texBytes = 16 * L4 * (2 * texDimClass(Bn * D) + 2 * texDimClass(Bn * N) + texDimClass(Bn * D));
      s.resetPeak("webgpu");
      const base = s.memory("webgpu").bytesInUse;
      const y = s.selectiveScan(g.u, g.delta, g.A, g.B, g.C, { version: "v2", chunkSize: 64 });
      const after = s.memory("webgpu");
      expect(after.peakBytes - base).toBeGreaterThanOrEqual(texBytes + 4 * y.size);
      expect(after.bytesInUse - base).toBeLessThan(texBytes); // released once recorded: pooled
      expect(after.pooledBytes).toBeGreaterThanOrEqual(texBytes);
      await y.toArray();
      gpu().emptyCache();
      expect(s.memory("webgpu").pooledBytes).toBe(0);
    }),
  );

  test(
    "an error inside the pass is thrown at the next readback of another tensor, naming the op; " +
      "the scan's output throws when read",
    scoped(async () => {
      const g = await setup();
      const other = s.tensor([1, 2, 3], { device: "webgpu" });
      await other.toArray();
      gpu().injectFault("selectiveScan");
      const y = s.selectiveScan(g.u, g.delta, g.A, g.B, g.C, { version: "v2", chunkSize: 64 });
      const read = other.toArray();
      await expect(read).rejects.toThrow(WebGPUError);
      await expect(read).rejects.toThrow(/validation error in selectiveScan/);
      await expect(y.toArray()).rejects.toThrow(/failed pass: .*selectiveScan/);
      expect(Array.from(await other.toArray())).toEqual([1, 2, 3]); // computed before: still good
    }),
  );
});

describe("selective scan bwd v3 (four channels per invocation)", () => {
  // v3 runs where D, D / G and L are multiples of 4 with input-dependent B and C; each case runs v3 and v2
  // into contiguous and channels-last destinations (v3 stores vec4s along t, resp. along the channels) with
  // a contiguous dout (packed into the texture); MambaLM's path (channels-last dout read from its buffer,
  // states saved by the forward) is covered by mamba_inner_test.ts.
  const cases: [number, number, number, number, Layout][] = [
    [2, 4, 40, 5, "var"],
    [2, 8, 36, 16, "group"],
    [1, 12, 64, 7, "var"],
  ];
  for (const [Bn, D, L, N, layout] of cases) {
    test(
      `B ${Bn}, D ${D}, L ${L}, N ${N}, ${layout} B and C: v3 and v2 equal the reference's, both layouts`,
      scoped(async () => {
        requireGpu();
        const x = inputs(Bn, D, L, N, layout, 41);
        const names = ["u", "delta", "A", "B", "C", "D", "z", "deltaBias"];
        const wy = s.randn([Bn, D, L], { seed: 9, ...cpu });
        const grads = async (xs: Tensor[], opts: SelectiveScanGpuOptions) => {
          const leaves = xs.map((t) => {
            const c = t.detach();
            c.requiresGrad = true;
            return c;
          });
          const y = s.selectiveScan(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], {
            D: leaves[5],
            z: leaves[6],
            deltaBias: leaves[7],
            deltaSoftplus: true,
            ...opts,
          });
          y.mul(await wy.to(y.device)).sum().backward();
          const out = await Promise.all(leaves.map(async (t) => await arr(t.grad!)));
          leaves.forEach((t) => t.zeroGrad());
          return out;
        };
        const all = (v: Inputs) => [v.u, v.delta, v.A, v.B, v.C, v.D, v.z, v.deltaBias];
        const ref = await grads(all(x).map((t) => s.cast(t, "f32")), {});
        const g = all(await toGpu(x));
        for (const channelsLast of [false, true]) {
          for (const backward of ["v3", "v2"] as const) {
            const got = await grads(g, { version: "v2", backward, channelsLast });
            names.forEach((n, i) => {
              try {
                assertClose(got[i], ref[i], n === "delta" || n === "deltaBias" ? DTOL : GTOL);
              } catch (e) {
                throw new Error(`${backward}, channelsLast ${channelsLast}, d${n}: ${(e as Error).message}`);
              }
            });
          }
        }
      }),
    );
  }

  test(
    "destinations without aligned vec4s (dz into a view at an odd offset) take scalar stores",
    scoped(async () => {
      requireGpu();
      const [Bn, D, L, N] = [2, 8, 24, 4];
      const x = inputs(Bn, D, L, N, "var", 51);
      const g = await toGpu(x);
      const dout = s.randn([Bn, D, L], { seed: 3, device: "webgpu" });
      const o = { D: g.D, z: g.z, deltaBias: g.deltaBias, deltaSoftplus: true };
      const A = g.A;
      // dz lands in (B, L, D + 1) storage at offset 1: channel stride 1 but the offset breaks the vec4s
      const host = s.zeros([Bn, L, D + 1], { device: "webgpu" });
      const dzInto = host.view([Bn, D, L], [L * (D + 1), 1, D + 1], 1);
      const run = (backward: "v2" | "v3", into: Tensor | null) =>
        scanGrads(g.u, g.delta, A, g.B, g.C, o, dout, { channelsLast: true, dzInto: into, backward });
      const r3 = run("v3", dzInto), r2 = run("v2", null);
      assertClose(await arr(dzInto), await arr(r2.dz!), GTOL);
      for (const k of ["du", "ddelta", "dA", "dB", "dC"] as const) {
        assertClose(await arr(r3[k]), await arr(r2[k]), k === "ddelta" ? DTOL : GTOL);
      }
      // the column past D is untouched
      const h = await arr(host);
      for (let b = 0; b < Bn; b++) for (let t = 0; t < L; t++) expect(h[(b * L + t) * (D + 1)]).toBe(0);
    }),
  );

  test(
    `backward "v3" where it cannot run names why; an unknown backward is refused`,
    scoped(async () => {
      requireGpu();
      const x = await toGpu(inputs(1, 4, 8, 4, "shared", 61));
      const req = (t: Tensor) => {
        const c = t.detach();
        c.requiresGrad = true;
        return c;
      };
      const y = s.selectiveScan(req(x.u), x.delta, x.A, x.B, x.C, { version: "v2", backward: "v3" });
      expect(() => y.sum().backward()).toThrow(/version "v3" cannot run: B and C must be input-dependent/);
      const x6 = await toGpu(inputs(1, 4, 6, 4, "var", 62));
      const y6 = s.selectiveScan(req(x6.u), x6.delta, x6.A, x6.B, x6.C, { version: "v2", backward: "v3" });
      expect(() => y6.sum().backward()).toThrow(/version "v3" cannot run: L = 6 must be a multiple of 4/);
      expect(() => s.selectiveScan(x.u, x.delta, x.A, x.B, x.C, { backward: "v4" as "v3" })).toThrow(
        /backward must be "auto", "v2" or "v3", got "v4"/,
      );
    }),
  );
});
