/**
 * The core ops on both backends. Importing this module fills the Tensor method table.
 * @module
 */

import { ops } from "../../runtime/tensor.ts";
import * as creation from "./creation.ts";
import * as elementwise from "./elementwise.ts";
import * as layout from "./layout.ts";
import * as matmulOps from "./matmul.ts";
import * as reduce from "./reduce.ts";
import * as rowwise from "./rowwise.ts";
import { fromArray } from "./util.ts";

export * from "./creation.ts";
export * from "./elementwise.ts";
export * from "./gradcheck.ts";
export * from "./layout.ts";
export * from "./matmul.ts";
export * from "./reduce.ts";
export * from "./rowwise.ts";
export { fromArray } from "./util.ts";

Object.assign(ops, creation, elementwise, layout, matmulOps, reduce, rowwise, { fromArray });
