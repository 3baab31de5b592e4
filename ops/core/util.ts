/** Helpers shared by the core ops: operand handling, output allocation, uniform packing, WGSL snippets. */

import { allocArray, type DType, isFloat, itemSize, type TypedArray, wgslType } from "../../runtime/dtype.ts";
import type { DeviceName } from "../../runtime/device.ts";
import { gpu } from "../../runtime/device.ts";
import { fmt, numel, type Shape } from "../../runtime/shape.ts";
import { newStorage, type Operand, Tensor } from "../../runtime/tensor.ts";
import { registerOps } from "../../runtime/tensor_ops.ts";

/** Throws unless every tensor is live and on one device; returns that device. */
export function sameDevice(op: string, ...ts: Tensor[]): DeviceName {
  for (const t of ts) t.check(op);
  const d = ts[0].device;
  for (const t of ts) {
    if (t.device !== d) {
      throw new Error(`${op}: tensors are on different devices: ${ts.map((x) => x.describe()).join(", ")}`);
    }
  }
  return d;
}

/** A new uninitialised tensor. */
export function empty(op: string, shape: Shape, dtype: DType, device: DeviceName): Tensor {
  return new Tensor(newStorage(device, dtype, numel(shape), `${op} output ${fmt(shape)} ${dtype}`), shape);
}

/**
 * Uploads or wraps host data as a new contiguous tensor. Extra values are ignored; missing ones are 0.
 *
 * @example
 * ```ts
 * import { fromArray } from "seqlab";
 * console.log(await fromArray([1, 2, 3, 4], [2, 2], "i32", "cpu").toArray()); // Int32Array [1, 2, 3, 4]
 * ```
 */
export function fromArray(
  data: ArrayLike<number>,
  shape: Shape,
  dtype: DType,
  device: DeviceName,
  name?: string,
): Tensor {
  const n = numel(shape);
  const what = `${name ? `tensor "${name}"` : "tensor"} ${fmt(shape)} ${dtype}`;
  const values = data.length <= n ? data : Array.from(data).slice(0, n);
  const storage = newStorage(device, dtype, n, what, true);
  if (storage.data) storage.data.set(values);
  else if (n > 0) {
    const arr = allocArray(dtype, n);
    arr.set(values);
    try {
      gpu().write(storage.buffer!, arr as ArrayBufferView);
    } catch (e) {
      storage.release(); // an op that throws leaves nothing allocated
      throw e;
    }
  }
  return new Tensor(storage, shape, undefined, 0, name);
}

/**
 * Runs `fn` and returns its result; if it throws, disposes `owned` first (an op's output and temporaries
 * it allocated before the call), so that an op that throws leaves nothing allocated.
 *
 * @example
 * ```ts
 * import { disposeOnThrow } from "./util.ts";
 * import { memory, zeros } from "seqlab";
 * const before = memory("cpu").bytesInUse;
 * const out = zeros([4], { device: "cpu" });
 * try {
 *   disposeOnThrow([out], () => {
 *     throw new Error("bad input");
 *   });
 * } catch (e) {
 *   console.log((e as Error).message); // bad input
 * }
 * console.log(memory("cpu").bytesInUse === before); // true
 * ```
 */
export function disposeOnThrow<T>(owned: readonly (Tensor | null | undefined)[], fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    for (const t of owned) t?.dispose();
    throw e;
  }
}

/** Turns a number operand into a scalar tensor like `like` (its device, its dtype or f32 for fractions). */
export function operand(x: Operand, like: Tensor): Tensor {
  if (x instanceof Tensor) return x;
  if (typeof x !== "number") throw new Error(`expected a Tensor or a number, got ${typeof x}`);
  const dtype: DType = isFloat(like.dtype) || Number.isInteger(x) ? like.dtype : "f32";
  return fromArray([x], [], dtype, like.device);
}

/** Packs uniform words: u32, i32 and f32 values into one Uint32Array (binding 0). */
export class Uniforms {
  private words: number[] = [];
  private f = new Float32Array(1);
  private u = new Uint32Array(this.f.buffer);
  u32(...v: number[]): this {
    for (const x of v) this.words.push(x >>> 0);
    return this;
  }
  i32(...v: number[]): this {
    for (const x of v) this.words.push(x | 0);
    return this;
  }
  f32(...v: number[]): this {
    for (const x of v) {
      this.f[0] = x;
      this.words.push(this.u[0]);
    }
    return this;
  }
  /** Pads with zeros to `n` words (to place fixed-size arrays at known indices). */
  padTo(n: number): this {
    while (this.words.length < n) this.words.push(0);
    return this;
  }
  get length(): number {
    return this.words.length;
  }
  build(): Uint32Array {
    return new Uint32Array(this.words);
  }
}

/** WGSL declarations for a uniform block of `words` u32 words read through `U(i)` / `UF(i)`. */
export function uniformDecl(words: number): string {
  const vecs = Math.max(1, Math.ceil(words / 4));
  return `struct Uni { w: array<vec4<u32>, ${vecs}> };
@group(0) @binding(0) var<uniform> u: Uni;
fn U(i: u32) -> u32 { return u.w[i >> 2u][i & 3u]; }
fn UF(i: u32) -> f32 { return bitcast<f32>(U(i)); }`;
}

/** `enable f16;` when any dtype is f16. */
export function enables(...dtypes: DType[]): string {
  return dtypes.includes("f16") ? "enable f16;\n" : "";
}

/** WGSL storage binding. */
export function binding(index: number, name: string, dtype: DType, write = false): string {
  const access = write ? "read_write" : "read";
  return `@group(0) @binding(${index}) var<storage, ${access}> ${name}: array<${wgslType(dtype)}>;`;
}

/** The type an op computes in for a dtype: f32 for floats (f16 widened), else the int type. */
export function computeType(dtype: DType): string {
  return isFloat(dtype) ? "f32" : dtype;
}

/** WGSL helpers for NaN checks and constants, safe under compilers that assume no NaNs. */
export const WGSL_MATH = `
fn is_nan(x: f32) -> bool { return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u; }
const NAN_F32 = 0x7fc00000u;
fn nan() -> f32 { return bitcast<f32>(NAN_F32); }
fn inf() -> f32 { return bitcast<f32>(0x7f800000u); }
`;

/** Reads element `i` of a tensor's cpu storage as a number (no checks: internal). */
export function hostData(t: Tensor): TypedArray {
  return t.storage.data!;
}

/** Bytes of a tensor's logical elements. */
export function logicalBytes(t: { size: number; dtype: DType }): number {
  return t.size * itemSize(t.dtype);
}

/** Merges dimensions that are contiguous in every stride list and drops size-1 dims (fewer index steps). */
export function coalesce(
  shape: Shape,
  strideLists: (readonly number[])[],
): { shape: number[]; strides: number[][] } {
  const outShape: number[] = [];
  const outStrides: number[][] = strideLists.map(() => []);
  for (let d = 0; d < shape.length; d++) {
    if (shape[d] === 1) continue;
    const last = outShape.length - 1;
    if (last >= 0 && strideLists.every((s, k) => outStrides[k][last] === s[d] * shape[d])) {
      outShape[last] *= shape[d];
      strideLists.forEach((s, k) => (outStrides[k][last] = s[d]));
    } else {
      outShape.push(shape[d]);
      strideLists.forEach((s, k) => outStrides[k].push(s[d]));
    }
  }
  return { shape: outShape, strides: outStrides };
}

registerOps({ fromArray });
