/**
 * Reference (cpu) elementwise kernels: plain loops over strided views, computing in float64 and rounding
 * once on store. Inputs arrive already broadcast to the output shape (stride 0 on broadcast dims).
 * @module
 */

import type { DType } from "../../runtime/dtype.ts";
import type { Tensor } from "../../runtime/tensor.ts";

/** Storage index of the element at row-major position `i` of a strided view. */
export function stridedIndex(
  i: number,
  shape: readonly number[],
  strides: readonly number[],
  offset: number,
): number {
  let idx = offset;
  for (let d = shape.length - 1; d >= 0; d--) {
    const n = shape[d];
    idx += (i % n) * strides[d];
    i = Math.floor(i / n);
  }
  return idx;
}

/**
 * Converts a float to `dtype` the way WGSL does: truncate toward zero and saturate to the largest f32 that
 * fits (2147483520 for i32, 4294967040 for u32); NaN becomes 0.
 */
export function toDType(v: number, dtype: DType): number {
  if (dtype === "i32") {
    return Number.isNaN(v) ? 0 : Math.min(Math.max(Math.trunc(v), -2147483648), 2147483520);
  }
  if (dtype === "u32") return Number.isNaN(v) ? 0 : Math.min(Math.max(Math.trunc(v), 0), 4294967040);
  return v;
}

/** Applies `fn` elementwise over equally shaped strided inputs into `out` (a contiguous or strided view). */
export function mapRef(inputs: Tensor[], dst: Tensor, fn: (...x: number[]) => number): void {
  const shape = inputs[0].shape;
  const datas = inputs.map((t) => t.storage.data!);
  const out = dst.storage.data!;
  const n = dst.size;
  const direct = dst.isContiguous;
  const xs = new Array<number>(inputs.length);
  const contiguous = inputs.every((t) => t.isContiguous);
  for (let i = 0; i < n; i++) {
    for (let k = 0; k < inputs.length; k++) {
      const t = inputs[k];
      xs[k] = datas[k][contiguous ? t.offset + i : stridedIndex(i, shape, t.strides, t.offset)];
    }
    // integer results wrap modulo 2^32 on store (as in WGSL); float results round once on store
    out[direct ? dst.offset + i : stridedIndex(i, shape, dst.strides, dst.offset)] = fn(...xs);
  }
}

const SQRT_PI = Math.sqrt(Math.PI);

/** erf in float64: Taylor series for |x| < 2.5, continued fraction for erfc beyond. */
export function erf(x: number): number {
  if (Number.isNaN(x)) return NaN;
  const a = Math.abs(x);
  if (a < 2.5) {
    let term = x, sum = x;
    const x2 = x * x;
    for (let n = 1; n < 100; n++) {
      term *= -x2 / n;
      const add = term / (2 * n + 1);
      sum += add;
      if (Math.abs(add) < 1e-17 * Math.abs(sum)) break;
    }
    return (2 / SQRT_PI) * sum;
  }
  if (a > 6) return Math.sign(x);
  // erfc(a) = exp(-a^2)/sqrt(pi) * 1/(a + (1/2)/(a + 1/(a + (3/2)/(a + ...))))
  let f = a;
  for (let k = 60; k >= 1; k--) f = a + (k / 2) / f;
  const erfc = Math.exp(-a * a) / SQRT_PI / f;
  return Math.sign(x) * (1 - erfc);
}

/** Float64 reference functions for the unary ops. */
export const unaryRef: Record<string, (x: number) => number> = {
  neg: (x) => -x,
  abs: (x) => Math.abs(x),
  exp: (x) => Math.exp(x),
  log: (x) => Math.log(x),
  sqrt: (x) => Math.sqrt(x),
  rsqrt: (x) => 1 / Math.sqrt(x),
  relu: (x) => (x < 0 ? 0 : x),
  gelu: (x) => 0.5 * x * (1 + erf(x / Math.SQRT2)),
  silu: (x) => x / (1 + Math.exp(-x)),
  sigmoid: (x) => 1 / (1 + Math.exp(-x)),
  tanh: (x) => Math.tanh(x),
  softplus: (x) => Math.max(x, 0) + Math.log1p(Math.exp(-Math.abs(x))),
  erf: (x) => erf(x),
  copy: (x) => x,
};

const INV_SQRT_2PI = 1 / Math.sqrt(2 * Math.PI);

/** The activations' derivatives in float64, with their limits at +-inf. */
export const actGradRef: Record<string, (x: number) => number> = {
  relu: (x) => (x > 0 ? 1 : 0),
  // Phi(x) + x phi(x)
  gelu: (x) =>
    0.5 * (1 + erf(x / Math.SQRT2)) + (Number.isFinite(x) ? x * Math.exp(-0.5 * x * x) * INV_SQRT_2PI : 0),
  // s (1 + x (1 - s)), s = sigmoid(x)
  silu: (x) => {
    if (x === Infinity) return 1;
    if (x === -Infinity) return 0;
    const s = 1 / (1 + Math.exp(-x));
    return s * (1 + x * (1 - s));
  },
};

/** `g * act'(x)`, where a relu that is off passes no gradient at all (not g * 0, NaN for an infinite g). */
export function actBackwardRef(act: string, g: number, x: number): number {
  return act === "relu" ? (x > 0 ? g : 0) : g * actGradRef[act](x);
}

/**
 * Float64 references of the fused unary backward passes: the input gradient from the incoming gradient
 * `g` and `v`, the op's input x or output y (as `unaryGradFrom` in elementwise_wgsl.ts says).
 */
export const unaryGradRef: Record<string, (g: number, v: number) => number> = {
  abs: (g, x) => (x > 0 ? g : x < 0 ? -g : 0),
  sqrt: (g, y) => g / (2 * y),
  rsqrt: (g, y) => g * y * y * y * -0.5,
  relu: (g, x) => actBackwardRef("relu", g, x),
  gelu: (g, x) => actBackwardRef("gelu", g, x),
  silu: (g, x) => actBackwardRef("silu", g, x),
  sigmoid: (g, y) => g * y * (1 - y),
  tanh: (g, y) => g * (1 - y * y),
  softplus: (g, x) => g / (1 + Math.exp(-x)),
  erf: (g, x) => g * Math.exp(-x * x) * (2 / SQRT_PI),
};

/** Float64 reference functions for the binary ops (float semantics; ints handled by the caller). */
export const binaryRef: Record<string, (a: number, b: number) => number> = {
  add: (a, b) => a + b,
  sub: (a, b) => a - b,
  mul: (a, b) => a * b,
  div: (a, b) => a / b,
  pow: (a, b) => Math.pow(a, b),
  maximum: (a, b) => (Number.isNaN(a) || Number.isNaN(b) ? NaN : Math.max(a, b)),
  minimum: (a, b) => (Number.isNaN(a) || Number.isNaN(b) ? NaN : Math.min(a, b)),
  eq: (a, b) => (a === b ? 1 : 0),
  ne: (a, b) => (a !== b ? 1 : 0),
  lt: (a, b) => (a < b ? 1 : 0),
  le: (a, b) => (a <= b ? 1 : 0),
  gt: (a, b) => (a > b ? 1 : 0),
  ge: (a, b) => (a >= b ? 1 : 0),
};

/** 32-bit integer versions where float64 would differ from wrapping integer arithmetic. */
export const intBinaryRef: Record<string, (a: number, b: number) => number> = {
  mul: (a, b) => Math.imul(a, b),
};
