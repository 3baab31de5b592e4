/**
 * State-space models, layout (B, D, L) with state size N: the selective scan (S6) of Mamba with its
 * float64 reference, sequential and chunked-parallel WebGPU versions, backward and single-step update.
 *
 * @example
 * ```ts
 * import { rand, randn, selectiveScan } from "seqlab";
 * const u = randn([1, 8, 32], { seed: 1 }), delta = rand([1, 8, 32], { seed: 2, low: 0.01, high: 0.1 });
 * const A = rand([8, 4], { seed: 3, low: -1, high: -0.1 });
 * const y = selectiveScan(u, delta, A, randn([1, 4, 32], { seed: 4 }), randn([1, 4, 32], { seed: 5 }));
 * console.log(y.shape); // [1, 8, 32]
 * ```
 * @module
 */

export { scanChunkSize, scanCost, selectiveScan, type SelectiveScanGpuOptions } from "./selective_scan.ts";
export type { SelectiveScanOptions } from "./scan_check.ts";
export {
  selectiveScanBackwardRef,
  type SelectiveScanGrads,
  selectiveScanRef,
  softplusRef,
} from "./selective_scan_ref.ts";
export { selectiveScanStep, type SelectiveScanStepOptions } from "./selective_scan_step.ts";
export { mambaLayerStep, type MambaStepParams, type MambaStepState } from "./mamba_step.ts";
export { mambaInner, type MambaInnerOptions, type MambaInnerParams } from "./mamba_inner.ts";
export { causalConv1d, type CausalConv1dOptions, causalConv1dStep } from "./conv1d.ts";
export { causalConv1dBackwardRef, causalConv1dRef } from "./conv1d_ref.ts";
export { discretize, type DiscretizeMethod, expm1OverX } from "./discretize.ts";
export {
  s4dInit,
  type S4DInitOptions,
  SSM_FFT_CROSSOVER,
  ssmConvolution,
  type SSMConvolutionMethod,
  ssmConvolutionMethod,
  type SSMConvolutionOptions,
  ssmKernel,
  ssmRecurrence,
} from "./s4.ts";
export { fftConvBackwardRef, fftConvRef, fftRef } from "./fft_ref.ts";
export {
  bilinearDense,
  denseSSMRef,
  type DiagSSM,
  discretizeDiag,
  hippoLegS,
  ssmKernelRef,
  type SSMModeOptions,
  ssmRecurrenceRef,
} from "./s4_ref.ts";
export { bidirectional, crossMerge, crossScan, flip } from "./vision.ts";
