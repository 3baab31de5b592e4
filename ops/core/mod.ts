/**
 * The core ops on both backends. Each op module registers its Tensor methods when it loads.
 * @module
 */

export * from "./creation.ts";
export * from "./elementwise.ts";
export * from "./gradcheck.ts";
export * from "./layout.ts";
export * from "./matmul.ts";
export * from "./reduce.ts";
export * from "./rowwise.ts";
export { fromArray } from "./util.ts";
