/**
 * Vision ops: {@link conv2d} (NCHW, stride, padding, dilation, groups) and its im2col, with float64
 * references in `conv2d_ref.ts`. The vision models are in `models/vision/`.
 * @module
 */

export * from "./conv2d.ts";
export { conv2dBackwardRef, conv2dRef, type Strided4 } from "./conv2d_ref.ts";
