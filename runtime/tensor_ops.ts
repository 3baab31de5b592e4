/**
 * The Tensor method table: the ops that `Tensor` methods (and autograd, safetensors) call, declared here
 * and filled by the op modules that implement them. Each op module registers its entries when it is
 * loaded (`registerOps({ add, sub, ... })` at its end), so importing an op fills the entries it and the
 * modules it imports implement; runtime/ never imports ops/. An entry nobody registered throws an error
 * that names the method and the module to import.
 * @module
 */

import type { DType } from "./dtype.ts";
import type { DeviceName } from "./device.ts";
import type { Shape } from "./shape.ts";
import type { CreateOptions, Operand, Tensor } from "./tensor.ts";

/** Reduction axes: one, several, or all (null or omitted). */
export type ReduceAxes = number | readonly number[] | null | undefined;

/** The signatures the runtime calls; the docs and examples are on the ops in ops/core. */
export interface TensorOps {
  // ops/core/creation.ts
  full(shape: Shape, value: number, opts?: CreateOptions): Tensor;
  zeros(shape: Shape, opts?: CreateOptions): Tensor;
  // ops/core/util.ts
  fromArray(data: ArrayLike<number>, shape: Shape, dtype: DType, device: DeviceName, name?: string): Tensor;
  // ops/core/elementwise.ts
  contiguous(x: Tensor): Tensor;
  copyInto(dst: Tensor, src: Tensor): Tensor;
  cast(x: Tensor, dtype: DType): Tensor;
  add(a: Operand, b: Operand): Tensor;
  sub(a: Operand, b: Operand): Tensor;
  mul(a: Operand, b: Operand): Tensor;
  div(a: Operand, b: Operand): Tensor;
  pow(a: Operand, b: Operand): Tensor;
  maximum(a: Operand, b: Operand): Tensor;
  minimum(a: Operand, b: Operand): Tensor;
  eq(a: Operand, b: Operand): Tensor;
  ne(a: Operand, b: Operand): Tensor;
  lt(a: Operand, b: Operand): Tensor;
  le(a: Operand, b: Operand): Tensor;
  gt(a: Operand, b: Operand): Tensor;
  ge(a: Operand, b: Operand): Tensor;
  neg(x: Tensor): Tensor;
  abs(x: Tensor): Tensor;
  exp(x: Tensor): Tensor;
  log(x: Tensor): Tensor;
  sqrt(x: Tensor): Tensor;
  rsqrt(x: Tensor): Tensor;
  relu(x: Tensor): Tensor;
  gelu(x: Tensor): Tensor;
  silu(x: Tensor): Tensor;
  sigmoid(x: Tensor): Tensor;
  tanh(x: Tensor): Tensor;
  softplus(x: Tensor): Tensor;
  // ops/core/reduce.ts
  sumTo(g: Tensor, shape: readonly number[]): Tensor;
  sum(x: Tensor, axis?: ReduceAxes, keepdims?: boolean): Tensor;
  mean(x: Tensor, axis?: ReduceAxes, keepdims?: boolean): Tensor;
  max(x: Tensor, axis?: ReduceAxes, keepdims?: boolean): Tensor;
  min(x: Tensor, axis?: ReduceAxes, keepdims?: boolean): Tensor;
  argmax(x: Tensor, axis?: number | null, keepdims?: boolean): Tensor;
  cumsum(x: Tensor, axis?: number): Tensor;
  // ops/core/matmul.ts
  matmul(a: Tensor, b: Tensor): Tensor;
  // ops/core/rowwise.ts
  softmax(x: Tensor, axis?: number): Tensor;
  logSumExp(x: Tensor, axis?: number, keepdims?: boolean): Tensor;
  layerNorm(x: Tensor, weight?: Tensor | null, bias?: Tensor | null, eps?: number): Tensor;
  rmsNorm(x: Tensor, weight?: Tensor | null, eps?: number): Tensor;
  // ops/core/layout.ts
  gather(x: Tensor, indices: Tensor, axis?: number): Tensor;
}

/** The module that implements each entry, for the error an unregistered entry throws. */
const HOME: Record<keyof TensorOps, string> = {
  full: "creation",
  zeros: "creation",
  fromArray: "util",
  contiguous: "elementwise",
  copyInto: "elementwise",
  cast: "elementwise",
  add: "elementwise",
  sub: "elementwise",
  mul: "elementwise",
  div: "elementwise",
  pow: "elementwise",
  maximum: "elementwise",
  minimum: "elementwise",
  eq: "elementwise",
  ne: "elementwise",
  lt: "elementwise",
  le: "elementwise",
  gt: "elementwise",
  ge: "elementwise",
  neg: "elementwise",
  abs: "elementwise",
  exp: "elementwise",
  log: "elementwise",
  sqrt: "elementwise",
  rsqrt: "elementwise",
  relu: "elementwise",
  gelu: "elementwise",
  silu: "elementwise",
  sigmoid: "elementwise",
  tanh: "elementwise",
  softplus: "elementwise",
  sumTo: "reduce",
  sum: "reduce",
  mean: "reduce",
  max: "reduce",
  min: "reduce",
  argmax: "reduce",
  cumsum: "reduce",
  matmul: "matmul",
  softmax: "rowwise",
  logSumExp: "rowwise",
  layerNorm: "rowwise",
  rmsNorm: "rowwise",
  gather: "layout",
};

function unregistered(name: keyof TensorOps): () => never {
  return () => {
    throw new Error(
      `Tensor.${name}: the op "${name}" is not registered; import { ${name} } from ` +
        `ops/core/${HOME[name]}.ts (or from "seqlab"): an op module registers its ops when it is loaded`,
    );
  };
}

/**
 * The table `Tensor` methods call through. Every entry starts as a stub that throws until the module that
 * implements it is loaded and calls {@link registerOps}.
 */
export const ops: TensorOps = Object.fromEntries(
  (Object.keys(HOME) as (keyof TensorOps)[]).map((name) => [name, unregistered(name)]),
) as unknown as TensorOps;

/**
 * Fills entries of the Tensor method table. Called once by each op module, at its end, with the entries it
 * implements; the implementations must match the signatures of {@link TensorOps}.
 *
 * @example
 * ```ts
 * import { ops, registerOps } from "./tensor_ops.ts";
 * import { add } from "seqlab"; // ops/core/elementwise.ts registered add (and the rest) when it loaded
 * registerOps({ add }); // registering the same implementation again changes nothing
 * console.log(ops.add === add); // true
 * ```
 */
export function registerOps(entries: Partial<TensorOps>): void {
  for (const [name, fn] of Object.entries(entries)) {
    if (!(name in HOME)) throw new Error(`registerOps: "${name}" is not an entry of the Tensor method table`);
    if (typeof fn !== "function") {
      throw new Error(`registerOps: "${name}" must be a function, got ${typeof fn}`);
    }
  }
  Object.assign(ops, entries);
}
