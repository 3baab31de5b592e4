/**
 * The training kit: modules and initialisers (`nn.ts`), losses (`loss.ts`), optimisers, gradient clipping
 * and learning-rate schedules (`optim.ts`), and safetensors checkpoints (`runtime/safetensors.ts`).
 *
 * @example
 * ```ts
 * import { Adam, crossEntropy, Linear, ReLU, Sequential, tensor, tidy } from "seqlab";
 * const net = new Sequential(new Linear(2, 16, { seed: 1 }), new ReLU(), new Linear(16, 2, { seed: 2 }));
 * const opt = new Adam(net.parameters(), { lr: 0.05 });
 * const x = tensor([[0, 0], [0, 1], [1, 0], [1, 1]]), y = tensor([0, 1, 1, 0], { dtype: "i32" });
 * for (let step = 0; step < 3; step++) {
 *   const loss = tidy(() => {
 *     opt.zeroGrad();
 *     const l = crossEntropy(net.forward(x), y);
 *     l.backward();
 *     opt.step();
 *     return l;
 *   });
 *   console.log(await loss.item()); // read only when logging
 *   loss.dispose();
 * }
 * opt.dispose();
 * net.dispose();
 * ```
 * @module
 */

export * from "./nn.ts";
export * from "./loss.ts";
export * from "./optim.ts";
export * from "./mamba.ts";
export {
  decodeIntoModel,
  decodeSafetensors,
  encodeModel,
  encodeSafetensors,
  loadModel,
  SafetensorsError,
  saveModel,
} from "../runtime/safetensors.ts";
export type {
  HasParameters,
  HasState,
  HostTensor,
  LoadOptions,
  SafetensorsFile,
  SaveOptions,
} from "../runtime/safetensors.ts";
export * from "./paged.ts";
export * from "./transformer.ts";
export * from "./mamba_lm.ts";
export * from "./moe.ts";
export * from "./jamba.ts";
export * from "./tasks.ts";
export * from "./timemachine.ts";
export * from "./jamba_config.ts";
export * from "./vision/mod.ts";
