/** Data types: the element kinds a tensor can hold. */

/**
 * A tensor element type. `f16` needs the adapter's `shader-f16` feature (and `Float16Array` on cpu).
 * `f64` lives on the cpu backend only (WGSL has no f64): it is for gradient checks and references.
 */
export type DType = "f32" | "f16" | "i32" | "u32" | "f64";

/** Every supported dtype, in promotion order (later wins). */
export const DTYPES: readonly DType[] = ["u32", "i32", "f16", "f32", "f64"];

/** A typed array holding one dtype's elements (`Float16Array` is ES2025; Deno and recent V8 have it). */
export type TypedArray = Float32Array | Int32Array | Uint32Array | Float16Array | Float64Array;

/** Bytes per element. */
export function itemSize(dtype: DType): number {
  return dtype === "f16" ? 2 : dtype === "f64" ? 8 : 4;
}

/** True for floating-point dtypes. */
export function isFloat(dtype: DType): boolean {
  return dtype === "f32" || dtype === "f16" || dtype === "f64";
}

// looked up at run time so that hosts without it still load the library (f16 then throws when used)
const F16 = (globalThis as { Float16Array?: typeof Float16Array }).Float16Array;

/** Allocates a zeroed typed array of `n` elements of `dtype`. */
export function allocArray(dtype: DType, n: number): TypedArray {
  switch (dtype) {
    case "f32":
      return new Float32Array(n);
    case "f64":
      return new Float64Array(n);
    case "i32":
      return new Int32Array(n);
    case "u32":
      return new Uint32Array(n);
    case "f16":
      if (!F16) throw new Error("f16: this host has no Float16Array; use f32");
      return new F16(n);
  }
}

/** Wraps raw bytes as a typed array of `dtype` (no copy). */
export function viewBytes(dtype: DType, buffer: ArrayBuffer, byteOffset: number, n: number): TypedArray {
  switch (dtype) {
    case "f32":
      return new Float32Array(buffer, byteOffset, n);
    case "f64":
      return new Float64Array(buffer, byteOffset, n);
    case "i32":
      return new Int32Array(buffer, byteOffset, n);
    case "u32":
      return new Uint32Array(buffer, byteOffset, n);
    case "f16":
      if (!F16) throw new Error("f16: this host has no Float16Array; use f32");
      return new F16(buffer, byteOffset, n);
  }
}

/** Infers a dtype from a typed array, or undefined for plain arrays. */
export function dtypeOf(data: unknown): DType | undefined {
  if (data instanceof Float32Array) return "f32";
  if (data instanceof Float64Array) return "f64";
  if (data instanceof Int32Array) return "i32";
  if (data instanceof Uint32Array) return "u32";
  if (F16 && data instanceof F16) return "f16";
  return undefined;
}

/** The dtype two operands promote to: float beats int, wider float beats narrower, i32 beats u32. */
export function promote(a: DType, b: DType): DType {
  return DTYPES.indexOf(a) >= DTYPES.indexOf(b) ? a : b;
}

/** Validates a user-supplied dtype name. */
export function checkDType(op: string, dtype: unknown): DType {
  if (dtype === "f32" || dtype === "f16" || dtype === "i32" || dtype === "u32" || dtype === "f64") {
    return dtype;
  }
  throw new Error(`${op}: unknown dtype ${JSON.stringify(dtype)}; expected one of f32, f16, i32, u32, f64`);
}

/** WGSL scalar type name for a dtype. */
export function wgslType(dtype: DType): string {
  return dtype === "f16" ? "f16" : dtype;
}
