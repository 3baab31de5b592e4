/**
 * Creating tensors: from data, constants, ranges and seeded random numbers (identical on both backends).
 * @module
 */

import { checkDType, type DType, dtypeOf, isFloat } from "../../runtime/dtype.ts";
import { checkDevice, getDevice, gpu } from "../../runtime/device.ts";
import { checkShape, fmt, numel, type Shape } from "../../runtime/shape.ts";
import type { CreateOptions, Tensor } from "../../runtime/tensor.ts";
import { grid } from "../../runtime/webgpu.ts";
import { registerOps } from "../../runtime/tensor_ops.ts";
import { randomRef } from "./random_ref.ts";
import { arangeSource, fillSource, RAND_WG, randomSource } from "./random_wgsl.ts";
import { disposeOnThrow, empty, fromArray, Uniforms } from "./util.ts";

/** Nested arrays of numbers (or booleans) of any depth. */
export type NestedArray = number | boolean | readonly NestedArray[];

function resolve(op: string, opts: CreateOptions | undefined, fallback: DType = "f32") {
  const dtype = opts?.dtype === undefined ? fallback : checkDType(op, opts.dtype);
  const device = opts?.device === undefined ? getDevice() : checkDevice(op, opts.device);
  return { dtype, device, name: opts?.name };
}

/** Throws unless `v` is an integer that `dtype` (i32 or u32) can hold exactly. */
function checkInt(op: string, v: number, dtype: DType): void {
  const [lo, hi] = dtype === "i32" ? [-(2 ** 31), 2 ** 31 - 1] : [0, 2 ** 32 - 1];
  if (!Number.isInteger(v) || v < lo || v > hi) {
    throw new Error(
      `${op}: ${v} is not a valid ${dtype} value (integers in [${lo}, ${hi}]); cast a float tensor instead`,
    );
  }
}

function flatten(data: NestedArray): { values: number[]; shape: number[] } {
  const shape: number[] = [];
  let probe: NestedArray = data;
  while (Array.isArray(probe)) {
    shape.push(probe.length);
    probe = probe[0] as NestedArray;
    if (probe === undefined) break;
  }
  const values: number[] = [];
  const walk = (x: NestedArray, dim: number) => {
    if (dim === shape.length) {
      if (Array.isArray(x)) {
        throw new Error(`tensor: ragged nested array (expected a number at depth ${dim})`);
      }
      if (typeof x === "boolean") values.push(x ? 1 : 0);
      else if (typeof x === "number") values.push(x);
      else throw new Error(`tensor: elements must be numbers, got ${typeof x} (${String(x)})`);
      return;
    }
    if (!Array.isArray(x) || x.length !== shape[dim]) {
      throw new Error(
        `tensor: ragged nested array: expected length ${shape[dim]} at depth ${dim}, got ${
          Array.isArray(x) ? x.length : typeof x
        }`,
      );
    }
    for (const y of x) walk(y, dim + 1);
  };
  walk(data, 0);
  return { values, shape };
}

/**
 * A tensor from a number, nested arrays or a typed array. The shape is inferred unless `shape` is given
 * (then the element count must match); the dtype is the typed array's, else f32.
 *
 * @example
 * ```ts
 * import { tensor } from "seqlab";
 * const t = tensor([[1, 2, 3], [4, 5, 6]]);
 * console.log(t.shape, t.dtype); // [2, 3] "f32"
 * const u = tensor(new Int32Array([1, 2, 3, 4]), { shape: [2, 2] });
 * console.log(u.dtype); // "i32"
 * ```
 */
export function tensor(
  data: NestedArray | ArrayLike<number>,
  opts?: CreateOptions & { shape?: Shape },
): Tensor {
  const typed = dtypeOf(data);
  const { dtype, device, name } = resolve("tensor", opts, typed ?? "f32");
  let values: ArrayLike<number>, shape: number[];
  if (ArrayBuffer.isView(data)) {
    values = data as unknown as ArrayLike<number>;
    shape = [values.length];
  } else ({ values, shape } = flatten(data as NestedArray));
  if (opts?.shape !== undefined) {
    const s = checkShape("tensor", opts.shape);
    if (numel(s) !== values.length) {
      throw new Error(`tensor: ${values.length} values do not fill shape ${fmt(s)} (${numel(s)} elements)`);
    }
    shape = s;
  }
  if (!isFloat(dtype) && typed !== dtype) {
    for (let i = 0; i < values.length; i++) checkInt("tensor", values[i], dtype);
  }
  return fromArray(values, shape, dtype, device, name);
}

/**
 * A tensor filled with `value`.
 *
 * @example
 * ```ts
 * import { full } from "seqlab";
 * console.log(await full([2], 7).toArray()); // [7, 7]
 * ```
 */
export function full(shape: Shape, value: number, opts?: CreateOptions): Tensor {
  const s = checkShape("full", shape);
  const { dtype, device, name } = resolve("full", opts);
  if (!isFloat(dtype) && numel(s) > 0) checkInt("full", value, dtype); // before allocating: nothing leaks
  const out = empty("full", s, dtype, device);
  out.name = name;
  if (out.size === 0) return out;
  const v = value;
  if (device === "cpu") {
    out.storage.data!.fill(v);
    return out;
  }
  const u = new Uniforms().u32(out.size);
  if (isFloat(dtype)) u.f32(v);
  else u.u32(v);
  return disposeOnThrow([out], () => {
    gpu().run({
      name: "full",
      key: dtype,
      source: () => fillSource(dtype),
      inputs: [],
      outputs: [out.storage.buffer!],
      uniforms: u.build(),
      workgroups: grid(out.size, RAND_WG),
    });
    return out;
  });
}

/**
 * A tensor of zeros.
 *
 * @example
 * ```ts
 * import { zeros } from "seqlab";
 * console.log(zeros([2, 3]).shape); // [2, 3]
 * ```
 */
export function zeros(shape: Shape, opts?: CreateOptions): Tensor {
  return full(shape, 0, opts);
}

/**
 * A tensor of ones.
 *
 * @example
 * ```ts
 * import { ones } from "seqlab";
 * console.log(await ones([3], { dtype: "i32" }).toArray()); // Int32Array [1, 1, 1]
 * ```
 */
export function ones(shape: Shape, opts?: CreateOptions): Tensor {
  return full(shape, 1, opts);
}

/**
 * Evenly spaced values in [start, stop) like NumPy: `arange(n)` or `arange(start, stop, step)`.
 *
 * @example
 * ```ts
 * import { arange } from "seqlab";
 * console.log(await arange(4).toArray()); // [0, 1, 2, 3]
 * console.log(await arange(1, 2, 0.25).toArray()); // [1, 1.25, 1.5, 1.75]
 * ```
 */
export function arange(
  startOrStop: number,
  stop?: number | CreateOptions,
  step: number | CreateOptions = 1,
  opts?: CreateOptions,
): Tensor {
  if (typeof stop === "object") [opts, stop] = [stop, undefined];
  if (typeof step === "object") [opts, step] = [step, 1];
  const [start, end] = stop === undefined ? [0, startOrStop] : [startOrStop, stop];
  if (![start, end, step].every(Number.isFinite) || step === 0) {
    throw new Error(`arange: start ${start}, stop ${end} and step ${step} must be finite, step non-zero`);
  }
  const n = Math.max(0, Math.ceil((end - start) / step));
  const { dtype, device, name } = resolve("arange", opts);
  if (!isFloat(dtype) && (!Number.isInteger(start) || !Number.isInteger(step))) {
    throw new Error(`arange: ${dtype} needs integer start and step, got ${start} and ${step}`);
  }
  const out = empty("arange", [n], dtype, device);
  out.name = name;
  if (n === 0) return out;
  if (device === "cpu") {
    const d = out.storage.data!;
    for (let i = 0; i < n; i++) d[i] = start + i * step;
    return out;
  }
  const u = new Uniforms().u32(n);
  if (isFloat(dtype)) u.f32(start, step);
  else u.i32(start, step);
  return disposeOnThrow([out], () => {
    gpu().run({
      name: "arange",
      key: dtype,
      source: () => arangeSource(dtype),
      inputs: [],
      outputs: [out.storage.buffer!],
      uniforms: u.build(),
      workgroups: grid(n, RAND_WG),
    });
    return out;
  });
}

// ---- random ------------------------------------------------------------------------------------------------

let globalSeed = 0x5eed;
let streamCounter = 0;

/**
 * Sets the global seed: calls without their own `seed` draw successive streams from it, so a script
 * seeded once produces the same tensors on every run and on both backends.
 *
 * @example
 * ```ts
 * import { manualSeed, randn } from "seqlab";
 * manualSeed(1);
 * const a = await randn([3]).toArray();
 * manualSeed(1);
 * const b = await randn([3]).toArray();
 * console.log(a[0] === b[0]); // true
 * ```
 */
export function manualSeed(seed: number): void {
  if (!Number.isSafeInteger(seed) || seed < 0) {
    throw new Error(`manualSeed: seed must be a non-negative integer, got ${seed}`);
  }
  globalSeed = seed;
  streamCounter = 0;
}

/** Options for random tensors. */
export interface RandomOptions extends CreateOptions {
  /** A seed for this call (else the next stream of the global seed). */
  seed?: number;
}

function random(
  op: string,
  kind: "uniform" | "normal",
  shape: Shape,
  a: number,
  b: number,
  opts?: RandomOptions,
) {
  const s = checkShape(op, shape);
  const { dtype, device, name } = resolve(op, opts);
  if (!isFloat(dtype)) throw new Error(`${op}: dtype must be f32 or f16, got ${dtype}`);
  let seed: number, stream: number;
  if (opts?.seed !== undefined) {
    if (!Number.isSafeInteger(opts.seed) || opts.seed < 0) {
      throw new Error(`${op}: seed must be a non-negative integer, got ${opts.seed}`);
    }
    seed = opts.seed;
    stream = 0;
  } else {
    seed = globalSeed;
    stream = ++streamCounter;
  }
  const out = empty(op, s, dtype, device);
  out.name = name;
  if (out.size === 0) return out;
  if (device === "cpu") {
    randomRef(kind, seed, stream, a, b, out.storage.data!);
    return out;
  }
  const u = new Uniforms().u32(out.size, seed >>> 0, Math.floor(seed / 2 ** 32), stream >>> 0);
  u.u32(Math.floor(stream / 2 ** 32)).f32(a, b).padTo(8);
  return disposeOnThrow([out], () => {
    gpu().run({
      name: op,
      key: `${kind}|${dtype}`,
      source: () => randomSource(kind, dtype),
      inputs: [],
      outputs: [out.storage.buffer!],
      uniforms: u.build(),
      workgroups: grid(Math.ceil(out.size / 4), RAND_WG),
    });
    return out;
  });
}

/**
 * Standard normal samples (Philox4x32-10 + Box-Muller), scaled by `std` and shifted by `mean`.
 *
 * @example
 * ```ts
 * import { randn } from "seqlab";
 * const x = randn([2, 3], { seed: 42 });
 * console.log(x.shape); // [2, 3]
 * ```
 */
export function randn(shape: Shape, opts?: RandomOptions & { mean?: number; std?: number }): Tensor {
  return random("randn", "normal", shape, opts?.mean ?? 0, opts?.std ?? 1, opts);
}

/**
 * Uniform samples in [low, high) (default [0, 1)) from Philox4x32-10; bit-identical on both backends.
 *
 * @example
 * ```ts
 * import { rand } from "seqlab";
 * const x = rand([4], { seed: 7, low: -1, high: 1 });
 * console.log(x.shape); // [4]
 * ```
 */
export function rand(shape: Shape, opts?: RandomOptions & { low?: number; high?: number }): Tensor {
  return random("rand", "uniform", shape, opts?.low ?? 0, opts?.high ?? 1, opts);
}

registerOps({ full, zeros });
