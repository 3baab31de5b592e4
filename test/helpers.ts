/**
 * Shared test helpers: `assertClose` (shape first, then |a - e| <= atol + rtol |e| with NaN matching NaN),
 * backend comparison, and a per-test leak check on the memory ledger.
 * @module
 */

import { afterEach, beforeEach, expect } from "vitest";
import { AdamW, cast, crossEntropy, memory, type Tensor, tensor, tidy } from "../mod.ts";
import { isFloat } from "../runtime/dtype.ts";
import { hasWebGPU } from "../runtime/device.ts";
import { fmt } from "../runtime/shape.ts";

/** Tolerances. */
export interface Tol {
  atol?: number;
  rtol?: number;
}

/** Default tolerances per dtype for ops computed in f32 against the float64 reference. */
export const TOL: Record<string, Required<Tol>> = {
  f32: { atol: 1e-5, rtol: 1e-5 },
  f16: { atol: 2e-3, rtol: 2e-3 },
  i32: { atol: 0, rtol: 0 },
  u32: { atol: 0, rtol: 0 },
};

/**
 * Checks shapes, then every element: NaN must match NaN, infinities must match exactly, others within
 * atol + rtol * |expected|. On failure, lists the first five mismatches with indices and the max error.
 */
export function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  { atol = 1e-5, rtol = 1e-5 }: Tol = {},
  shapes?: { actual: readonly number[]; expected: readonly number[] },
): void {
  if (shapes && fmt(shapes.actual) !== fmt(shapes.expected)) {
    throw new Error(`shape mismatch: actual ${fmt(shapes.actual)}, expected ${fmt(shapes.expected)}`);
  }
  if (actual.length !== expected.length) {
    throw new Error(`length mismatch: actual ${actual.length}, expected ${expected.length}`);
  }
  const bad: string[] = [];
  let nBad = 0, maxErr = 0;
  for (let i = 0; i < actual.length; i++) {
    const a = actual[i], e = expected[i];
    let ok: boolean;
    if (Number.isNaN(e)) ok = Number.isNaN(a);
    else if (!Number.isFinite(e)) ok = a === e;
    else {
      const err = Math.abs(a - e);
      ok = err <= atol + rtol * Math.abs(e);
      if (Number.isFinite(err)) maxErr = Math.max(maxErr, err);
      else maxErr = Infinity;
    }
    if (!ok) {
      nBad++;
      if (bad.length < 5) bad.push(`  [${i}] actual ${a}, expected ${e}`);
    }
  }
  if (nBad > 0) {
    throw new Error(
      `${nBad} of ${actual.length} elements differ (atol ${atol}, rtol ${rtol}, max error ${maxErr}):\n${
        bad.join("\n")
      }`,
    );
  }
}

/** Compares two tensors' values (and shapes). */
export async function expectClose(actual: Tensor, expected: Tensor, tol?: Tol): Promise<void> {
  assertClose(await actual.toArray(), await expected.toArray(), tol ?? TOL[expected.dtype], {
    actual: actual.shape,
    expected: expected.shape,
  });
  expect(actual.dtype).toBe(expected.dtype);
}

/**
 * Runs `fn` on cpu copies and on webgpu copies of `inputs` (cpu tensors), and checks the webgpu result
 * against the cpu reference. Returns nothing; everything it creates is disposed.
 */
export async function compareBackends(
  fn: (...xs: Tensor[]) => Tensor,
  inputs: Tensor[],
  tol?: Tol,
): Promise<void> {
  await tidy(async () => {
    const ref = fn(...inputs);
    const gpuInputs = await Promise.all(inputs.map((t) => t.to("webgpu")));
    const out = fn(...gpuInputs);
    await expectClose(out, ref, tol);
  });
}

/** Whether the webgpu backend is available (the tests need it; CI installs Mesa's lavapipe). */
export const GPU = hasWebGPU();

/** Registers hooks that fail a test whose tensors are still alive after it (per device). */
export function leakCheck(): void {
  let before = { cpu: 0, webgpu: 0 };
  beforeEach(() => {
    before = { cpu: memory("cpu").bytesInUse, webgpu: memory("webgpu").bytesInUse };
  });
  afterEach((ctx) => {
    if (ctx.task.result?.state === "fail") return; // a failed test's tensors are not the leak to report
    expect(
      { cpu: memory("cpu").bytesInUse, webgpu: memory("webgpu").bytesInUse },
      "bytes in use after the test",
    )
      .toEqual(before);
  });
}

/** Deterministic test data with optional special values mixed in. */
export function data(n: number, seed = 1, scale = 1, specials: number[] = []): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    out[i] = ((s >>> 0) / 2 ** 32 * 2 - 1) * scale;
  }
  specials.forEach((v, k) => {
    if (n > 0) out[(k * 7919) % n] = v;
  });
  return out;
}

/**
 * Wraps a test body in `tidy`, so tensors it creates inline are freed even when an assertion fails.
 * Ops' own temporaries are checked separately (test/leaks.test.ts runs every op outside any scope).
 */
export function scoped(fn: () => Promise<void> | void): () => Promise<void> {
  return async () => {
    await tidy(async () => {
      await fn();
    });
  };
}

/** f32 copies on webgpu of reference inputs: float ones (e.g. f64) are cast, integer ones (indices) move as they are. */
export function gpu32(ts: readonly Tensor[]): Promise<Tensor[]> {
  return Promise.all(
    ts.map(async (t) => (isFloat(t.dtype) ? await cast(t, "f32").to("webgpu") : await t.to("webgpu"))),
  );
}

/**
 * Trains `lm` 25 AdamW steps (lr 1e-2) on a period-3 pattern with a phase per row (predictable from the last
 * 3 tokens, vocabulary >= 7) and returns the first and last loss: a language model that learns drops well
 * below ln V.
 */
export async function periodicLmLosses(
  lm: { forward(tokens: Tensor): Tensor; parameters(): Tensor[] },
  B: number,
  T: number,
  V: number,
  device: "cpu" | "webgpu",
): Promise<[number, number]> {
  const opt = new AdamW(lm.parameters(), { lr: 1e-2, weightDecay: 0 });
  const seq = (off: number) =>
    Int32Array.from({ length: B * T }, (_, i) => [1, 4, 6][(Math.floor(i / T) + (i % T) + off) % 3]);
  const x = tensor(seq(0), { shape: [B, T], dtype: "i32", device });
  const y = tensor(seq(1), { shape: [B * T], dtype: "i32", device });
  const losses: number[] = [];
  for (let i = 0; i < 25; i++) {
    const l = tidy(() => {
      opt.zeroGrad();
      const l = crossEntropy(lm.forward(x).reshape([B * T, V]), y);
      l.backward();
      opt.step();
      return l;
    });
    if (i === 0 || i === 24) losses.push(await l.item());
    l.dispose();
  }
  opt.dispose();
  x.dispose();
  y.dispose();
  return [losses[0], losses[1]];
}
