import { describe, expect, test } from "vitest";
import * as s from "../../mod.ts";
import type { DiagSSM, Tensor } from "../../mod.ts";
import { assertClose, leakCheck, requireGpu, scoped } from "../../test/helpers.ts";

leakCheck();

const arr = async (t: Tensor) => Array.from(await t.toArray());
const f64 = { device: "cpu" as const, dtype: "f64" as const };
const TOL = { atol: 2e-3, rtol: 6e-4 }; // the fp32 tolerances of the Mamba reference repo

describe("discretize", () => {
  test(
    "ZOH equals the exact solution of x' = a x + b u with u held over the step (fine Euler integration)",
    scoped(async () => {
      const a = [-2, -0.5, -1e-9, 0], dt = 0.3;
      const { Abar, Bbar } = s.discretize(s.tensor(a, f64), s.tensor([1, 1, 1, 1], f64), s.tensor([dt], f64));
      const steps = 200000, h = dt / steps;
      const exactA: number[] = [], exactB: number[] = [];
      for (const ai of a) {
        let x1 = 1, x0 = 0; // x1: from x(0) = 1, u = 0; x0: from x(0) = 0, u = 1
        for (let k = 0; k < steps; k++) {
          x1 += h * ai * x1;
          x0 += h * (ai * x0 + 1);
        }
        exactA.push(x1);
        exactB.push(x0);
      }
      assertClose(await arr(Abar), exactA, { atol: 1e-5, rtol: 1e-5 });
      assertClose(await arr(Bbar), exactB, { atol: 1e-5, rtol: 1e-5 });
      // the limit delta A -> 0: B_bar = delta B exactly, no NaN
      expect((await arr(Bbar))[3]).toBe(dt);
    }),
  );

  test(
    "bilinear and simplified forms; gradients finite at A = 0",
    scoped(async () => {
      const A = s.tensor([-1, 0], f64), B = s.tensor([2, 3], f64), dt = s.tensor([0.5], f64);
      const bl = s.discretize(A, B, dt, "bilinear");
      assertClose(await arr(bl.Abar), [0.75 / 1.25, 1], { atol: 1e-15, rtol: 0 });
      assertClose(await arr(bl.Bbar), [1 / 1.25, 1.5], { atol: 1e-15, rtol: 0 });
      const sm = s.discretize(A, B, dt, "simplified");
      assertClose(await arr(sm.Abar), [Math.exp(-0.5), 1], { atol: 1e-15, rtol: 0 });
      assertClose(await arr(sm.Bbar), [1, 1.5], { atol: 1e-15, rtol: 0 });
      // A = 0 and a delta A inside the Taylor branch: finite, matching gradients in A, B and delta
      const A3 = s.tensor([-1, 0, 3e-5], f64), B3 = s.tensor([2, 3, 1], f64);
      for (const method of ["zoh", "bilinear", "simplified"] as const) {
        await s.gradcheck((a, b, d) => s.discretize(a, b, d, method).Bbar, [A3, B3, dt]);
        await s.gradcheck((a, b, d) => s.discretize(a, b, d, method).Abar, [A3, B3, dt]);
      }
      expect(() => s.discretize(A, B, dt, "euler" as never)).toThrow(
        /method must be "zoh", "bilinear" or "simplified"/,
      );
    }),
  );
});

describe("S4", () => {
  test(
    "HiPPO-LegS and the S4D initialisations",
    scoped(() => {
      const { A, B } = s.hippoLegS(4);
      // lower triangular, -(n + 1) on the diagonal, -sqrt(2n+1) sqrt(2k+1) below
      expect(A[0 * 4 + 1]).toBe(0);
      expect(A[3 * 4 + 3]).toBe(-4);
      expect(A[2 * 4 + 1]).toBeCloseTo(-Math.sqrt(5 * 3), 12);
      expect(Array.from(B)).toEqual([1, Math.sqrt(3), Math.sqrt(5), Math.sqrt(7)]);
      const lin = s.s4dInit("lin", 2, 3, { seed: 1 }), real = s.s4dInit("real", 2, 3, { seed: 1 });
      expect(Array.from(lin.Are)).toEqual([-0.5, -0.5, -0.5, -0.5, -0.5, -0.5]);
      expect(Array.from(lin.Aim!)).toEqual([0, Math.PI, 2 * Math.PI, 0, Math.PI, 2 * Math.PI]);
      expect(Array.from(real.Are)).toEqual([-1, -2, -3, -1, -2, -3]);
      for (const d of lin.delta) expect(d >= 1e-3 && d <= 0.1).toBe(true);
    }),
  );

  test(
    "the kernel is the recurrence's impulse response (float64)",
    scoped(() => {
      const ssm = s.s4dInit("lin", 3, 6, { seed: 2, dtMin: 0.01, dtMax: 0.5 });
      const L = 40;
      for (const method of ["zoh", "bilinear", "simplified"] as const) {
        const K = s.ssmKernelRef(ssm, L, { method, conj: true });
        const u = new Float64Array(3 * L);
        for (let d = 0; d < 3; d++) u[d * L] = 1;
        assertClose(s.ssmRecurrenceRef(u, [1, 3, L], ssm, { method, conj: true }), K, {
          atol: 1e-12,
          rtol: 1e-12,
        });
      }
    }),
  );

  const modes: [string, "lin" | "real", s.SSMModeOptions][] = [
    ["S4D-Lin, ZOH", "lin", { method: "zoh", conj: true }],
    ["S4D-Lin, bilinear", "lin", { method: "bilinear", conj: true }],
    ["S4D-Real, ZOH", "real", { method: "zoh" }],
  ];
  const methods = ["direct", "fft", "auto"] as const;
  for (const [name, kind, opts] of modes) {
    for (const device of ["cpu", "webgpu"] as const) {
      test(
        `convolution mode (direct, fft, auto) equals recurrent mode: ${name}, ${device}`,
        scoped(async () => {
          const [Bn, D, N, L] = [2, 3, 8, 97];
          const ssm = s.s4dInit(kind, D, N, { seed: 3, dtMin: 0.01, dtMax: 0.2 });
          const Dskip = [0.5, -1, 2];
          const u64 = s.randn([Bn, D, L], { seed: 4, ...f64 });
          const u = device === "cpu" ? u64 : await s.cast(u64, "f32").to("webgpu");
          const K = s.ssmKernel(ssm, L, { ...opts, device, dtype: u.dtype });
          const rec = s.ssmRecurrence(u, ssm, { ...opts, Dskip });
          const ref = s.ssmRecurrenceRef(await u64.toArray(), u.shape, ssm, { ...opts, Dskip });
          const tol = device === "cpu" ? { atol: 1e-10, rtol: 1e-10 } : TOL;
          assertClose(await arr(rec), Array.from(ref), tol);
          for (const method of methods) {
            const conv = s.ssmConvolution(u, K, {
              Dskip: s.tensor(Dskip, { device, dtype: u.dtype }),
              method,
            });
            assertClose(await arr(conv), Array.from(ref), tol);
          }
        }),
      );
    }
  }

  // L = 1, odd, not a power of two, in the thousands; a kernel shorter than L; D a multiple of 4 or not
  const lengths: [number, number, number, number][] = [
    [1, 1, 1, 1],
    [2, 3, 1, 1],
    [1, 5, 31, 31],
    [2, 4, 200, 200],
    [1, 3, 1500, 1500],
    [1, 2, 4100, 4100],
    [3, 2, 600, 40],
  ];
  for (const [Bn, D, L, Lk] of lengths) {
    for (const device of ["cpu", "webgpu"] as const) {
      test(
        `fft equals direct, the recurrence and the float64 reference: B ${Bn}, D ${D}, L ${L}, Lk ${Lk}, ${device}`,
        scoped(async () => {
          const ssm = s.s4dInit("lin", D, 4, { seed: L, dtMin: 0.001, dtMax: 0.05 });
          const u64 = s.randn([Bn, D, L], { seed: L + 1, ...f64 });
          const u = device === "cpu" ? u64 : await s.cast(u64, "f32").to("webgpu");
          const opts = { conj: true };
          const K64 = s.ssmKernel(ssm, Lk, { ...opts, device: "cpu", dtype: "f64" });
          const K = device === "cpu" ? K64 : await s.cast(K64, "f32").to("webgpu");
          const direct = await arr(s.ssmConvolution(u, K, { method: "direct" }));
          const fft = await arr(s.ssmConvolution(u, K, { method: "fft" }));
          const tol = device === "cpu" ? { atol: 1e-9, rtol: 1e-9 } : TOL;
          // the float64 references: the FFT convolution, and with a full-length kernel the recurrence
          const ref = s.fftConvRef(await u64.toArray(), u.shape, await K64.toArray(), Lk);
          assertClose(fft, Array.from(ref), tol);
          assertClose(direct, Array.from(ref), tol);
          if (Lk === L) {
            const recRef = s.ssmRecurrenceRef(await u64.toArray(), u.shape, ssm, opts);
            assertClose(Array.from(ref), Array.from(recRef), { atol: 1e-9, rtol: 1e-9 });
            assertClose(await arr(s.ssmRecurrence(u, ssm, opts)), Array.from(recRef), tol);
          }
        }),
      );
    }
  }

  test(
    "HiPPO-LegS (dense, bilinear as in S4): the kernel convolution equals the recurrence",
    scoped(async () => {
      const N = 8, L = 64, dt = 0.05;
      const { A, B } = s.hippoLegS(N);
      const { Abar, Bbar } = s.bilinearDense(A, B, dt);
      const C = s.randn([N], { seed: 5, ...f64 }).storage.data as Float64Array;
      const u = s.randn([1, 1, L], { seed: 6, ...f64 });
      const K = s.denseSSMRef(Abar, Bbar, C, L);
      const rec = s.denseSSMRef(Abar, Bbar, C, L, await u.toArray());
      const devices = ["cpu", "webgpu"] as const;
      for (const device of devices) {
        const dtype = device === "cpu" ? "f64" : "f32";
        const ud = await s.cast(u, dtype).to(device);
        const y = s.ssmConvolution(ud, s.tensor(K, { shape: [1, L], device, dtype }));
        assertClose(await arr(y), Array.from(rec), device === "cpu" ? { atol: 1e-10, rtol: 1e-10 } : TOL);
      }
    }),
  );

  test(
    "convolution mode is differentiable in u, K and the skip, direct and by FFT (gradcheck)",
    scoped(async () => {
      const u = s.randn([2, 3, 9], { seed: 1, ...f64 }), K = s.randn([3, 5], { seed: 2, ...f64 });
      const Dk = s.randn([3], { seed: 3, ...f64 });
      for (const method of ["direct", "fft"] as const) {
        await s.gradcheck((a, k, d) => s.ssmConvolution(a, k, { Dskip: d, method }), [u, K, Dk]);
      }
      // a kernel longer than L: the cut is differentiable too (its tail gets zero gradient)
      const Kl = s.randn([3, 12], { seed: 4, ...f64 });
      await s.gradcheck((a, k) => s.ssmConvolution(a, k, { method: "fft" }), [u, Kl]);
    }),
  );

  test(
    "WebGPU gradients of the FFT path equal the direct path's float64 gradients (u, K, skip)",
    scoped(async () => {
      const u64 = s.randn([3, 5, 70], { seed: 1, ...f64 }), K64 = s.randn([5, 70], { seed: 2, ...f64 });
      const D64 = s.randn([5], { seed: 3, ...f64 }), g64 = s.randn([3, 5, 70], { seed: 4, ...f64 });
      const grads = async (method: "direct" | "fft", xs: s.Tensor[], g: s.Tensor) => {
        for (const x of xs) x.requiresGrad = true;
        s.ssmConvolution(xs[0], xs[1], { Dskip: xs[2], method }).backward(g);
        const out = await Promise.all(xs.map(async (x) => Array.from(await x.grad!.toArray())));
        for (const x of xs) x.zeroGrad();
        return out;
      };
      const want = await grads("direct", [u64, K64, D64].map((t) => t.detach()), g64);
      const gx = await Promise.all(
        [u64, K64, D64, g64].map(async (t) => await s.cast(t, "f32").to("webgpu")),
      );
      const got = await grads("fft", gx.slice(0, 3), gx[3]);
      for (let i = 0; i < 3; i++) assertClose(got[i], want[i], TOL);
    }),
  );

  test(
    "A with a positive real part throws; shapes are checked",
    scoped(() => {
      const ssm = s.s4dInit("lin", 2, 3);
      const bad: DiagSSM = { ...ssm, Are: Float64Array.from(ssm.Are, (v, i) => (i === 4 ? 0.25 : v)) };
      expect(() => s.ssmKernel(bad, 8)).toThrow(
        "discretizeDiag: A[1, 1] has real part 0.25 > 0; a stable SSM needs Re(A) <= 0 (A is [2, 3])",
      );
      const u = s.zeros([1, 3, 8], { device: "cpu" });
      expect(() => s.ssmRecurrence(u, ssm)).toThrow(
        "ssmRecurrence: u must be (B, D, L) with D = 2 (the SSM's channels), got tensor [1, 3, 8] f32 on cpu",
      );
      expect(() => s.ssmConvolution(u, s.zeros([2, 8], { device: "cpu" }))).toThrow(
        "ssmConvolution: K must be (D, Lk) with D = 3 (u [1, 3, 8]) and Lk >= 1, got [2, 8]",
      );
      const K = s.zeros([3, 8], { device: "cpu" });
      expect(() => s.ssmConvolution(u, s.zeros([3, 0], { device: "cpu" }), { method: "fft" })).toThrow(
        "ssmConvolution: K must be (D, Lk) with D = 3 (u [1, 3, 8]) and Lk >= 1, got [3, 0]",
      );
      expect(() => s.ssmConvolution(u, K, { method: "fast" as never })).toThrow(
        'ssmConvolution: method must be "direct", "fft" or "auto", got "fast"',
      );
      expect(() => s.ssmConvolution(u.reshape([3, 8]), K, { method: "fft" })).toThrow(
        "ssmConvolution: u must be (B, D, L), got tensor [3, 8] f32 on cpu",
      );
      expect(() => s.ssmConvolution(u, s.zeros([3, 8], { device: "cpu", dtype: "f64" }), { method: "fft" }))
        .toThrow(
          "ssmConvolution: devices or dtypes differ: tensor [1, 3, 8] f32 on cpu, tensor [3, 8] f64 on cpu",
        );
      expect(() => s.ssmConvolution(u, K, { method: "fft", Dskip: s.zeros([2], { device: "cpu" }) })).toThrow(
        "ssmConvolution: Dskip must be (D) = [3], got [2]",
      );
      expect(() => s.ssmConvolution(u, s.zeros([3, 8], { device: "cpu", dtype: "i32" }))).toThrow(
        "ssmConvolution: needs float tensors, got tensor [3, 8] i32 on cpu",
      );
      requireGpu(); // the checks below mix in webgpu tensors
      expect(() => s.ssmConvolution(u, s.zeros([3, 8], { device: "webgpu" }), { method: "fft" })).toThrow(
        "ssmConvolution: devices or dtypes differ: tensor [1, 3, 8] f32 on cpu, tensor [3, 8] f32 on webgpu",
      );
      // the FFT path's version: the same error on both backends and with either method
      for (const device of ["cpu", "webgpu"] as const) {
        const ud = s.zeros([1, 3, 8], { device }), Kd = s.zeros([3, 8], { device });
        for (const method of ["direct", "fft", "auto"] as const) {
          expect(() => s.ssmConvolution(ud, Kd, { method, version: "v2" as never }), device).toThrow(
            'ssmConvolution: version must be "auto" or "v1", got "v2"',
          );
        }
        const y = s.ssmConvolution(ud, Kd, { method: "fft", version: "v1" });
        expect(y.shape).toEqual([1, 3, 8]);
      }
    }),
  );
});
