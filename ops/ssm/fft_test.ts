// The float64 FFT and FFT convolution references against the definitions (a naive DFT, the direct causal
// sum), and the WebGPU FFT path (texture Stockham passes, fft_wgsl.ts) against them over a grid of
// lengths that exercises every pass plan, both pointwise variants (D a multiple of 4 or not), inputs at
// offsets the texture copy cannot take, and the backward.
import { describe, expect, test } from "vitest";
import * as s from "../../mod.ts";
import { assertClose, leakCheck, scoped } from "../../test/helpers.ts";
import { gpu } from "../../runtime/device.ts";
import { WebGPUError } from "../../runtime/webgpu.ts";
import { fftPlan } from "./fft.ts";

leakCheck();

const f64 = { device: "cpu" as const, dtype: "f64" as const };
const TOL = { atol: 2e-3, rtol: 6e-4 }; // the fp32 tolerances of the Mamba reference repo

function rng(seed: number) {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32 * 2 - 1;
  };
}
const randArray = (n: number, seed: number) => Float64Array.from({ length: n }, rng(seed));

/** The O(n^2) DFT by its definition. */
function dft(re: Float64Array, im: Float64Array, sign: number): [Float64Array, Float64Array] {
  const n = re.length, or = new Float64Array(n), oi = new Float64Array(n);
  for (let k = 0; k < n; k++) {
    for (let t = 0; t < n; t++) {
      const a = (sign * 2 * Math.PI * ((k * t) % n)) / n;
      or[k] += re[t] * Math.cos(a) - im[t] * Math.sin(a);
      oi[k] += re[t] * Math.sin(a) + im[t] * Math.cos(a);
    }
  }
  return [or, oi];
}

/** The causal convolution by its definition: y[b, d, t] = sum_{s <= t, t - s < Lk} K[d, t - s] u[b, d, s]. */
function directConv(
  u: ArrayLike<number>,
  [Bn, D, L]: number[],
  K: ArrayLike<number>,
  Lk: number,
): Float64Array {
  const y = new Float64Array(Bn * D * L);
  for (let b = 0; b < Bn; b++) {
    for (let d = 0; d < D; d++) {
      for (let t = 0; t < L; t++) {
        let acc = 0;
        for (let j = 0; j < Math.min(Lk, t + 1); j++) acc += K[d * Lk + j] * u[(b * D + d) * L + t - j];
        y[(b * D + d) * L + t] = acc;
      }
    }
  }
  return y;
}

const dot = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
};

describe("fft reference", () => {
  test("a hand case, and forward/inverse against the DFT's definition for n = 1 ... 1024", () => {
    const re = new Float64Array([1, 2, 3, 4]), im = new Float64Array(4);
    s.fftRef(re, im);
    assertClose(re, [10, -2, -2, -2], { atol: 1e-14, rtol: 0 });
    assertClose(im, [0, 2, 0, -2], { atol: 1e-14, rtol: 0 });
    for (const n of [1, 2, 4, 8, 32, 256, 1024]) {
      const xr = randArray(n, n), xi = randArray(n, n + 1);
      for (const inverse of [false, true]) {
        const [er, ei] = dft(xr, xi, inverse ? 1 : -1);
        if (inverse) er.forEach((_, i) => ((er[i] /= n), (ei[i] /= n)));
        const ar = xr.slice(), ai = xi.slice();
        s.fftRef(ar, ai, inverse);
        assertClose(ar, er, { atol: 1e-11, rtol: 1e-11 });
        assertClose(ai, ei, { atol: 1e-11, rtol: 1e-11 });
      }
    }
  });

  test("fftConvRef equals the direct causal sum; fftConvBackwardRef is its adjoint", () => {
    for (
      const [Bn, D, L, Lk] of [[1, 1, 1, 1], [2, 3, 7, 7], [1, 2, 100, 37], [3, 1, 257, 1], [
        1,
        2,
        1000,
        1000,
      ]]
    ) {
      const u = randArray(Bn * D * L, L), K = randArray(D * Lk, Lk + 1), g = randArray(Bn * D * L, L + 2);
      const y = s.fftConvRef(u, [Bn, D, L], K, Lk);
      assertClose(y, directConv(u, [Bn, D, L], K, Lk), { atol: 1e-10, rtol: 1e-10 });
      // y is bilinear in (u, K): <y, g> = <u, du> = <K, dK>, and du, dK are the direct correlations
      const { du, dK } = s.fftConvBackwardRef(g, u, [Bn, D, L], K, Lk);
      expect(dot(du, u)).toBeCloseTo(dot(y, g), 8);
      expect(dot(dK, K)).toBeCloseTo(dot(y, g), 8);
      if (L <= 100) {
        const eu = new Float64Array(u.length), eK = new Float64Array(K.length);
        for (let b = 0; b < Bn; b++) {
          for (let d = 0; d < D; d++) {
            const r = (b * D + d) * L;
            for (let t = 0; t < L; t++) {
              for (let j = 0; j < Math.min(Lk, t + 1); j++) {
                eu[r + t - j] += g[r + t] * K[d * Lk + j];
                eK[d * Lk + j] += g[r + t] * u[r + t - j];
              }
            }
          }
        }
        assertClose(du, eu, { atol: 1e-10, rtol: 1e-10 });
        assertClose(dK, eK, { atol: 1e-10, rtol: 1e-10 });
      }
    }
  });

  test("bad input throws", () => {
    expect(() => s.fftRef(new Float64Array(6), new Float64Array(6))).toThrow(
      "fftRef: the length must be a power of two, got 6",
    );
    expect(() => s.fftRef(new Float64Array(4), new Float64Array(2))).toThrow(
      "fftRef: re and im differ in length",
    );
    expect(() => s.fftConvRef([1, 2], [1, 1, 2], [1, 2, 3], 3)).toThrow(
      "fftConvRef: K must be (D, Lk) with 1 <= Lk <= L = 2 and D = 1, got Lk 3, 3 values",
    );
    expect(() => s.fftConvRef([1, 2, 3], [1, 1, 2], [1], 1)).toThrow(
      "fftConvRef: u must be (B, D, L) with B D L values, got shape [1,1,2] and 3 values",
    );
  });
});

describe("fft plans", () => {
  test("radix-8 passes, one smaller power of two last; [1] for n = 1", () => {
    expect(fftPlan(1)).toEqual([1]);
    expect(fftPlan(2)).toEqual([2]);
    expect(fftPlan(16)).toEqual([8, 2]);
    expect(fftPlan(512)).toEqual([8, 8, 8]);
    expect(fftPlan(8192)).toEqual([8, 8, 8, 8, 2]);
    for (let p = 0; p <= 20; p++) expect(fftPlan(2 ** p).reduce((a: number, b) => a * b, 1)).toBe(2 ** p);
  });
});

describe("WebGPU FFT path", () => {
  // (B, D, L, Lk): n = nextPow2(L + Lk - 1) from 1 to 8192, i.e. plans [1], [4], [8, 2], [8, 8, 4], [8, 8, 8],
  // [8, 8, 8, 4], [8, 8, 8, 8, 2]; D both a multiple of 4 (the aligned pointwise pass) and not
  const grid: [number, number, number, number][] = [
    [1, 1, 1, 1],
    [1, 3, 2, 2],
    [2, 3, 7, 7],
    [3, 5, 97, 60],
    [1, 8, 256, 256],
    [2, 4, 1000, 1000],
    [1, 6, 3000, 3000],
    [5, 4, 77, 5],
  ];
  for (const [Bn, D, L, Lk] of grid) {
    test(
      `forward and backward equal the float64 reference: B ${Bn}, D ${D}, L ${L}, Lk ${Lk}`,
      scoped(async () => {
        const u64 = s.randn([Bn, D, L], { seed: L, ...f64 }),
          K64 = s.randn([D, Lk], { seed: Lk + 1, ...f64 });
        const g64 = s.randn([Bn, D, L], { seed: L + 2, ...f64 });
        const [u, K, g] = await Promise.all(
          [u64, K64, g64].map(async (t) => await s.cast(t, "f32").to("webgpu")),
        );
        u.requiresGrad = true;
        K.requiresGrad = true;
        const y = s.ssmConvolution(u, K, { method: "fft" });
        const ref = s.fftConvRef(await u64.toArray(), u.shape, await K64.toArray(), Lk);
        assertClose(await y.toArray(), ref, TOL);
        y.backward(g);
        const r = s.fftConvBackwardRef(
          await g64.toArray(),
          await u64.toArray(),
          u.shape,
          await K64.toArray(),
          Lk,
        );
        try {
          assertClose(await u.grad!.toArray(), r.du, TOL);
          assertClose(await K.grad!.toArray(), r.dK, TOL);
        } finally {
          u.zeroGrad(); // gradients live on their leaves, outside the tidy scope
          K.zeroGrad();
        }
      }),
    );
  }

  test(
    "inputs at offsets the texture copy cannot take, a kernel longer than L, B = 0",
    scoped(async () => {
      const [Bn, D, L] = [2, 3, 33]; // D L = 99: the second batch row starts at float 99 (not 16-byte aligned)
      const big = s.randn([3, D, L], { seed: 1, ...f64 }), Kl = s.randn([D, 50], { seed: 2, ...f64 });
      const u64 = big.slice([[1, 3]]);
      const [bg, Kg] = await Promise.all([big, Kl].map(async (t) => await s.cast(t, "f32").to("webgpu")));
      const ug = bg.slice([[1, 3]]);
      expect(ug.offset % 4).not.toBe(0);
      const y = s.ssmConvolution(ug, Kg, { method: "fft" });
      const want = directConv(await u64.toArray(), [Bn, D, L], await Kl.slice([null, [0, L]]).toArray(), L);
      assertClose(await y.toArray(), want, TOL);
      const empty = s.ssmConvolution(s.zeros([0, D, L]), Kg, { method: "fft" });
      expect(empty.shape).toEqual([0, D, L]);
    }),
  );

  test("run outside any tidy scope, the FFT path frees its temporaries (forward and backward)", async () => {
    const before = s.memory("webgpu").bytesInUse;
    const u = s.randn([2, 5, 40], { seed: 1 }), K = s.randn([5, 40], { seed: 2 });
    u.requiresGrad = true;
    K.requiresGrad = true;
    const y = s.ssmConvolution(u, K, { method: "fft" });
    const l = y.sum();
    l.backward();
    await u.grad!.toArray();
    for (const t of [y, l, u, K]) {
      t.zeroGrad();
      t.dispose();
    }
    expect(s.memory("webgpu").bytesInUse).toBe(before);
  });
});

describe("the FFT path records into the context's batch (textures from the pool, one error channel)", () => {
  const setup = async () => {
    const u = s.randn([2, 4, 100], { seed: 1 }), K = s.randn([4, 100], { seed: 2 });
    const g = s.randn([2, 4, 100], { seed: 3 });
    await gpu().sync();
    return { u, K, g };
  };

  test(
    "no submit; the ledger counts the two work textures while the call records; emptyCache() empties the pool",
    scoped(async () => {
      const { u, K } = await setup();
      const ctx = gpu();
      const c0 = { ...ctx.counters };
      s.resetPeak("webgpu");
      const base = s.memory("webgpu").bytesInUse;
      // n = 256 texels a group, 2 groups of u and 1 of K: two textures of at least 768 texels
      const y = s.ssmConvolution(u, K, { method: "fft" });
      expect(ctx.counters.submits - c0.submits).toBe(0);
      const after = s.memory("webgpu");
      expect(after.peakBytes - base).toBeGreaterThanOrEqual(2 * 768 * 16 + 4 * y.size);
      expect(after.bytesInUse - base).toBeLessThan(2 * 768 * 16);
      const want = s.fftConvRef(await u.toArray(), u.shape, await K.toArray(), 100);
      assertClose(await y.toArray(), want, TOL);
      gpu().emptyCache(); // the pooled textures and buffers, and the twiddle table
      expect(s.memory("webgpu").pooledBytes).toBe(0);
    }),
  );

  for (const op of ["ssmConvolution", "ssmConvolution backward"]) {
    test(
      `an error inside the ${op} pass is thrown at the next readback of another tensor, naming the op; ` +
        "what it computed throws when read",
      scoped(async () => {
        const { u, K, g } = await setup();
        const other = s.tensor([1, 2, 3], { device: "webgpu" });
        await other.toArray();
        u.requiresGrad = true;
        try {
          gpu().injectFault(op);
          const y = s.ssmConvolution(u, K, { method: "fft" });
          if (op === "ssmConvolution backward") y.backward(g);
          const read = other.toArray();
          await expect(read).rejects.toThrow(WebGPUError);
          await expect(read).rejects.toThrow(`validation error in ${op}:`);
          const own = op === "ssmConvolution" ? y : u.grad!;
          await expect(own.toArray()).rejects.toThrow(`failed pass: webgpu validation error in ${op}:`);
        } finally {
          u.zeroGrad();
        }
      }),
    );
  }
});

describe("dispatch", () => {
  test("auto picks the FFT from the measured crossover: kernel length and work", () => {
    for (const device of ["cpu", "webgpu"] as const) {
      const { kernel, work } = s.SSM_FFT_CROSSOVER[device];
      const big: [number, number, number] = [1, 1024, 4096];
      expect(s.ssmConvolutionMethod(device, big, kernel - 1)).toBe("direct");
      expect(s.ssmConvolutionMethod(device, big, kernel)).toBe("fft");
      if (work > 0) {
        const L = kernel, D = Math.floor(work / (L * L)); // B D L Lk just under the work threshold
        expect(s.ssmConvolutionMethod(device, [1, D, L], L)).toBe(D * L * L >= work ? "fft" : "direct");
        expect(s.ssmConvolutionMethod(device, [1, D + 1, L], L)).toBe("fft");
      }
    }
    expect(s.ssmConvolutionMethod("webgpu", [1, 1, 1], 1)).toBe("direct");
  });
});
