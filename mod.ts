/**
 * seqlab: tensors on WebGPU (with a plain-TypeScript reference backend) for studying long-context
 * sequence architectures. Importing this module acquires the WebGPU adapter (or falls back to cpu).
 *
 * @example
 * ```ts
 * import { matmul, randn } from "seqlab";
 * const a = randn([64, 32]), b = randn([32, 16]);
 * console.log(matmul(a, b).shape); // [64, 16]
 * ```
 * @module
 */

import { initDevices } from "./runtime/device.ts";

export type { DType, TypedArray } from "./runtime/dtype.ts";
export type { Shape } from "./runtime/shape.ts";
export type { MemoryInfo } from "./runtime/memory.ts";
export { memory, resetPeak } from "./runtime/memory.ts";
export { adapterInfo, getDevice, hasWebGPU, setDefaultDevice } from "./runtime/device.ts";
export type { DeviceName } from "./runtime/device.ts";
export { keep, Storage, Tensor, tidy } from "./runtime/tensor.ts";
export type { CreateOptions, Operand, SliceSpec } from "./runtime/tensor.ts";
export { WebGPUError } from "./runtime/webgpu.ts";
export * from "./ops/core/mod.ts";
export * from "./ops/attention/mod.ts";
export * from "./ops/posenc/mod.ts";
export * from "./ops/approx/mod.ts";
export * from "./ops/ssm/mod.ts";
export * from "./ops/paged/mod.ts";
export * from "./ops/moe/mod.ts";
export * from "./ops/vision/mod.ts";
export { isGradEnabled, noGrad, param, record } from "./runtime/autograd.ts";
export type { GradNode } from "./runtime/autograd.ts";
export * from "./models/mod.ts";
export * from "./serve/mod.ts";

await initDevices();
