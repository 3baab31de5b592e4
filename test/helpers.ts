/**
 * Shared test helpers: `testOp` (one line per case: value and gradient of an op on every backend against
 * the float64 reference), `assertClose` (shape first, then |a - e| <= atol + rtol |e| with NaN matching
 * NaN), `requireGpu` (a test that needs WebGPU fails with a notice where there is none), and a per-test
 * leak check on the memory ledger.
 * @module
 */

import { afterEach, beforeEach, expect } from "vitest";
import {
  AdamW,
  cast,
  crossEntropy,
  type DType,
  gradcheck,
  type GradcheckOptions,
  memory,
  Tensor,
  tensor,
  tidy,
  type TypedArray,
} from "../mod.ts";
import { isFloat } from "../runtime/dtype.ts";
import { type DeviceName, hasWebGPU } from "../runtime/device.ts";
import { env } from "../runtime/platform.ts";
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

/**
 * Whether the webgpu backend is available. Tests must not branch on it to pass without a GPU: a test that
 * needs WebGPU calls {@link requireGpu}, which fails it with the notice.
 */
export const GPU = hasWebGPU();

/** What a test that needs WebGPU says when the host has no adapter. */
export const GPU_NOTICE =
  "this test needs a WebGPU adapter: install Debian's mesa-vulkan-drivers (Vulkan lavapipe)";

/**
 * Fails the calling test with {@link GPU_NOTICE} when there is no WebGPU adapter (or SEQLAB_DEVICE=cpu
 * turned it off); a test that needs WebGPU never returns early and passes, and is never skipped.
 */
export function requireGpu(): void {
  if (hasWebGPU()) return;
  const forced = env("SEQLAB_DEVICE") === "cpu" ? " (SEQLAB_DEVICE=cpu turned WebGPU off)" : "";
  throw new Error(`${GPU_NOTICE}${forced}`);
}

/** {@link requireGpu} for a test that runs once per device: nothing for "cpu". */
export function requireDevice(device: DeviceName): void {
  if (device === "webgpu") requireGpu();
}

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

// ---------------------------------------------------------------------------------------------------------
// testOp: one line per case, forward value and gradient against the float64 reference on every backend

/** The dtypes a {@link testOp} input can have on the backends under test (float ones are f64 in the reference). */
export type InputDType = "f32" | "f16" | "i32" | "u32";

/**
 * One input of {@link testOp}: a shape (seeded random values in the options' range), or a spec that
 * overrides the options for this input or gives its values.
 */
export type OpInput = readonly number[] | InputSpec;

/** An input of {@link testOp} described in full. */
export interface InputSpec {
  /** Shape (inferred from `values` when they are nested arrays; a flat `values` is 1-D by default). */
  shape?: readonly number[];
  /** Explicit values (a number, nested arrays or a flat array); random when absent. */
  values?: number | readonly unknown[] | ArrayLike<number>;
  /** This input's dtype (default: the options' `dtype`). */
  dtype?: InputDType;
  /** Range of random values: uniform in [low, high) (integers: floor of it). */
  low?: number;
  high?: number;
  /** Special values written over random ones (at spread-out positions). */
  specials?: readonly number[];
}

/** Options of {@link testOp}. */
export interface TestOpOptions {
  /** Range of random inputs (default [-2, 2) for floats, [-10, 10) for i32, [0, 20) for u32). */
  low?: number;
  high?: number;
  /** dtype of inputs that do not name one (default f32); "i32"/"u32" give integer inputs. */
  dtype?: InputDType;
  /** Special values mixed into every random float input that does not give its own. */
  specials?: readonly number[];
  /** Seed of the inputs and of the cotangent (default 1). */
  seed?: number;
  /** The function run on the float64 reference when it differs from `fn` (e.g. a shader version). */
  reference?: (...xs: Tensor[]) => Tensor;
  /** Check gradients (default: when an input and the output are float and the output requires grad). */
  grad?: boolean;
  /**
   * Check the reference's gradient by float64 finite differences (gradcheck). Default: for random inputs
   * without special values, at most 64 float elements in all, and a finite output.
   */
  gradcheck?: boolean | GradcheckOptions;
  /** Forward tolerance (default {@link TOL} of the output dtype). */
  atol?: number;
  rtol?: number;
  /** Gradient tolerance (default {@link GRAD_TOL} of the input's dtype). */
  gradAtol?: number;
  gradRtol?: number;
  /** The backends checked against the reference (default cpu and webgpu, in the inputs' dtypes). */
  devices?: readonly DeviceName[];
  /** Names the case in failure messages (default: the function's source). */
  name?: string;
}

/** Default gradient tolerances per input dtype (the forward's {@link TOL} loosened as tinygrad does). */
export const GRAD_TOL: Record<string, Required<Tol>> = {
  f32: { atol: 1e-4, rtol: 1e-3 },
  f16: { atol: 1e-2, rtol: 1e-2 },
};

/** What {@link testOp} computed: the reference output and each backend's. */
export interface TestOpResult {
  shape: readonly number[];
  /** The backends' output dtype (the reference's, with f64 standing for the inputs' float dtype). */
  dtype: DType;
  /** The reference's values (float64 for float outputs). */
  reference: TypedArray;
  /** Each checked backend's values. */
  outputs: Partial<Record<DeviceName, TypedArray>>;
}

interface Prepared {
  shape: number[];
  dtype: InputDType;
  values: Float64Array;
  random: boolean;
}

interface Run {
  shape: readonly number[];
  dtype: DType;
  values: TypedArray;
  /** Each input's gradient (null: not float, or not reached); absent when no backward ran. */
  grads?: (TypedArray | null)[];
}

/** splitmix-style hash: well-spread uniforms in [0, 1) from any small seed. */
function uniforms(n: number, seed: number): Float64Array {
  const out = new Float64Array(n);
  let s = Math.imul(seed >>> 0, 0x9e3779b9) >>> 0;
  for (let i = 0; i < n; i++) {
    s = (s + 0x9e3779b9) >>> 0;
    let h = s;
    h ^= h >>> 16;
    h = Math.imul(h, 0x85ebca6b);
    h ^= h >>> 13;
    h = Math.imul(h, 0xc2b2ae35);
    h ^= h >>> 16;
    out[i] = (h >>> 0) / 2 ** 32;
  }
  return out;
}

/** `v` as the nearest value of `dtype` (floats round; integers pass as they are). */
function roundTo(v: number, dtype: DType): number {
  return dtype === "f32" ? Math.fround(v) : dtype === "f16" ? Math.f16round(v) : v;
}

function flatten(v: number | readonly unknown[] | ArrayLike<number>): { values: number[]; shape: number[] } {
  if (typeof v === "number") return { values: [v], shape: [] };
  if (!Array.isArray(v)) return { values: Array.from(v as ArrayLike<number>), shape: [v.length] };
  const values: number[] = [], shape: number[] = [];
  const walk = (x: unknown, d: number) => {
    if (!Array.isArray(x)) {
      values.push(x as number);
      return;
    }
    if (shape.length === d) shape.push(x.length);
    for (const y of x) walk(y, d + 1);
  };
  walk(v, 0);
  return { values, shape };
}

function prepare(inp: OpInput, k: number, opts: TestOpOptions): Prepared {
  const spec: InputSpec = Array.isArray(inp) ? { shape: inp as readonly number[] } : inp as InputSpec;
  const dtype = spec.dtype ?? opts.dtype ?? "f32";
  if (spec.values !== undefined) {
    const f = flatten(spec.values);
    const shape = [...(spec.shape ?? f.shape)];
    return { shape, dtype, values: Float64Array.from(f.values, (v) => roundTo(v, dtype)), random: false };
  }
  if (!spec.shape) throw new Error(`testOp: input ${k} needs a shape or values`);
  const shape = [...spec.shape], n = shape.reduce((a, b) => a * b, 1);
  const int = dtype === "i32" || dtype === "u32";
  const low = spec.low ?? opts.low ?? (dtype === "u32" ? 0 : int ? -10 : -2);
  const high = spec.high ?? opts.high ?? (dtype === "u32" ? 20 : int ? 10 : 2);
  const u = uniforms(n, (opts.seed ?? 1) * 7919 + k);
  const values = u.map((x) => {
    const v = low + x * (high - low);
    return int ? Math.floor(v) : roundTo(v, dtype);
  });
  const specials = int ? [] : spec.specials ?? opts.specials ?? [];
  specials.forEach((v, j) => {
    if (n > 0) values[(j * 7919) % n] = roundTo(v, dtype);
  });
  return { shape, dtype, values, random: specials.length === 0 };
}

const describeFn = (fn: (...xs: Tensor[]) => Tensor) => {
  const src = fn.toString().replace(/\s+/g, " ");
  return src.length > 90 ? `${src.slice(0, 87)}...` : src;
};

/**
 * Runs `fn` on fresh leaves made from `inputs` on `device` (float ones in f64 for the reference); with
 * `cotFor`, sets requiresGrad on the float leaves and backpropagates the cotangent it gives for the output's
 * shape (the vector-Jacobian product, i.e. the gradient of sum(out * cot)). Everything it makes is freed by the caller's tidy; gradients are cleared here.
 */
async function runOnce(
  fn: (...xs: Tensor[]) => Tensor,
  inputs: Prepared[],
  device: DeviceName,
  reference: boolean,
  cotFor: ((shape: readonly number[]) => Float64Array) | null,
): Promise<Run> {
  const leaves = inputs.map((p) =>
    tensor(p.values, { shape: p.shape, dtype: reference && isFloat(p.dtype) ? "f64" : p.dtype, device })
  );
  try {
    if (cotFor) { for (const l of leaves) if (isFloat(l.dtype)) l.requiresGrad = true; }
    const out = fn(...leaves);
    if (!(out instanceof Tensor)) throw new Error(`the function returned ${String(out)}, not a tensor`);
    const run: Run = { shape: out.shape, dtype: out.dtype, values: await out.toArray() };
    if (cotFor && out.requiresGrad && isFloat(out.dtype)) {
      out.backward(tensor(cotFor(out.shape), { shape: out.shape, dtype: out.dtype, device }));
      run.grads = [];
      for (const l of leaves) run.grads.push(l.grad ? await l.grad.toArray() : null);
    }
    return run;
  } finally {
    for (const l of leaves) l.zeroGrad();
  }
}

/**
 * Checks an op in one line, as tinygrad's `helper_test_op` does: makes seeded random inputs of the given
 * shapes (or takes explicit values), runs `fn` on the float64 cpu reference and on each backend (cpu and
 * webgpu by default, in the inputs' dtypes), compares shapes, dtypes and values, then backpropagates one
 * seeded random cotangent (the gradient of sum(out * cot)) on each and compares every input's gradient.
 * For small random cases it also checks the reference's gradient by finite differences (gradcheck).
 * Failures name the case, the backend, the input and the max error. Everything it makes is freed.
 *
 * @example
 * ```ts
 * import { gather } from "seqlab";
 * await testOp([[3, 4], [4]], (a, b) => a.add(b));
 * await testOp([[5, 3], { values: [4, 0, 2], dtype: "i32" }], (x, i) => gather(x, i));
 * await testOp([[3, 4]], (x) => x.log(), { low: 0.5, high: 3 });
 * ```
 */
export async function testOp(
  inputs: readonly OpInput[],
  fn: (...xs: Tensor[]) => Tensor,
  opts: TestOpOptions = {},
): Promise<TestOpResult> {
  const devices = opts.devices ?? ["cpu", "webgpu"];
  if (devices.includes("webgpu")) requireGpu();
  const prepared = inputs.map((inp, k) => prepare(inp, k, opts));
  const label = `testOp ${opts.name ?? describeFn(fn)} on ${
    prepared.map((p) => `${fmt(p.shape)} ${p.dtype}`).join(", ") || "no inputs"
  }`;
  const fail = (where: string, e: unknown): never => {
    throw new Error(`${label}: ${where}: ${(e as Error).message}`, { cause: e });
  };
  const anyFloat = prepared.some((p) => isFloat(p.dtype));
  const lowest = prepared.some((p) => p.dtype === "f16") ? "f16" : "f32";
  const wantGrad = opts.grad !== false && anyFloat;
  return await tidy(async () => {
    // the cotangent: exact in every float dtype under test, so every backend backpropagates the same numbers
    const cotFor = (shape: readonly number[]) =>
      uniforms(shape.reduce((a, b) => a * b, 1), (opts.seed ?? 1) * 7919 + 104729)
        .map((u) => roundTo(2 * u - 1, lowest));
    const refFn = opts.reference ?? fn;
    let ref: Run;
    try {
      ref = await runOnce(refFn, prepared, "cpu", true, wantGrad ? cotFor : null);
    } catch (e) {
      return fail("the float64 reference", e);
    }
    if (opts.grad === true && !ref.grads) {
      fail("the float64 reference", new Error("grad: true, but the output does not require grad"));
    }

    const fd = opts.gradcheck ?? (ref.grads !== undefined &&
      prepared.every((p) => p.random || !isFloat(p.dtype)) &&
      prepared.reduce((n, p) => n + (isFloat(p.dtype) ? p.values.length : 0), 0) <= 64 &&
      Array.from(ref.values).every(Number.isFinite));
    if (fd && ref.grads) {
      try {
        const x64 = prepared.map((p) =>
          tensor(p.values, { shape: p.shape, dtype: isFloat(p.dtype) ? "f64" : p.dtype, device: "cpu" })
        );
        await gradcheck(refFn, x64, { atol: 1e-7, rtol: 1e-6, ...(fd === true ? {} : fd) });
      } catch (e) {
        fail("the float64 reference's gradient against finite differences", e);
      }
    }

    const outputs: Partial<Record<DeviceName, TypedArray>> = {};
    // the output dtype: the reference's, with float64 standing for the inputs' widest float dtype
    const widest = prepared.some((p) => p.dtype === "f32") || !anyFloat ? "f32" : lowest;
    const wantDtype = ref.dtype === "f64" ? widest : ref.dtype;
    for (const device of devices) {
      let got: Run;
      try {
        got = await runOnce(fn, prepared, device, false, ref.grads ? cotFor : null);
      } catch (e) {
        return fail(device, e);
      }
      outputs[device] = got.values;
      if (got.dtype !== wantDtype) {
        fail(device, new Error(`output dtype ${got.dtype}, expected ${wantDtype}`));
      }
      const expected = Float64Array.from(ref.values as ArrayLike<number>, (v) => roundTo(v, got.dtype));
      try {
        assertClose(got.values, expected, {
          atol: opts.atol ?? TOL[got.dtype].atol,
          rtol: opts.rtol ?? TOL[got.dtype].rtol,
        }, { actual: got.shape, expected: ref.shape });
      } catch (e) {
        fail(`${device} forward against the float64 reference`, e);
      }
      if (!ref.grads) continue;
      if (!got.grads) fail(device, new Error("the output does not require grad, but the reference's does"));
      prepared.forEach((p, k) => {
        if (!isFloat(p.dtype)) return;
        const n = p.values.length;
        const want = ref.grads![k] ?? new Float64Array(n), have = got.grads![k] ?? new Float64Array(n);
        try {
          assertClose(have, Float64Array.from(want as ArrayLike<number>, (v) => roundTo(v, p.dtype)), {
            atol: opts.gradAtol ?? GRAD_TOL[p.dtype].atol,
            rtol: opts.gradRtol ?? GRAD_TOL[p.dtype].rtol,
          });
        } catch (e) {
          fail(`${device} gradient of input ${k} (${fmt(p.shape)} ${p.dtype})`, e);
        }
      });
    }
    return { shape: ref.shape, dtype: wantDtype, reference: ref.values, outputs };
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

/**
 * Throws unless `f` throws an instance of `cls` whose message contains `msg` (a named error, not just any
 * error that happens to say the right words).
 */
export function expectThrowsNamed(f: () => unknown, cls: new (...a: never[]) => Error, msg: string): void {
  let err: unknown;
  try {
    f();
  } catch (e) {
    err = e;
  }
  expect(err, msg).toBeInstanceOf(cls);
  expect((err as Error).message).toContain(msg);
}
