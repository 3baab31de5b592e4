/**
 * Vision ops: {@link conv2d} (NCHW, stride, padding, dilation, groups) and its im2col, with float64
 * references in `conv2d_ref.ts`. The vision models are in `models/vision/`.
 * @module
 */

export * from "./conv2d.ts";
export { conv2dBackwardRef, conv2dRef, type Strided4 } from "./conv2d_ref.ts";
export {
  adaptiveAvgPool2d,
  type AdaptiveGeometry,
  avgPool2d,
  type AvgPool2dOptions,
  maxPool2d,
  type MaxPool2dOptions,
  type PoolGeometry,
  poolGeometry,
  type Size2,
} from "./pool.ts";
export {
  adaptiveAvgPool2dBackwardRef,
  adaptiveAvgPool2dRef,
  avgPool2dBackwardRef,
  avgPool2dRef,
  maxPool2dBackwardRef,
  maxPool2dRef,
} from "./pool_ref.ts";
export { type PatchGeometry, patchGeometry, patchify, type PatchOptions, unpatchify } from "./patch.ts";
export { patchifyRef, type Strided3, unpatchifyRef } from "./patch_ref.ts";
export { batchNorm2d, type BatchNorm2dOptions } from "./batchnorm.ts";
export {
  batchNorm2dBackwardRef,
  batchNorm2dRef,
  batchNormStatsRef,
  runningUpdateRef,
} from "./batchnorm_ref.ts";
