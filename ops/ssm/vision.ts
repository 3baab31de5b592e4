/**
 * The scans of vision SSMs, composed from core ops (either device, differentiable): Vision Mamba's
 * bidirectional scan, and VMamba's 2D cross-scan / cross-merge over four directions.
 * @module
 */

import { normAxis } from "../../runtime/shape.ts";
import { type Tensor, tidy } from "../../runtime/tensor.ts";
import { tensor } from "../core/creation.ts";
import { add, contiguous, mul } from "../core/elementwise.ts";
import { gather, stack } from "../core/layout.ts";

/**
 * Reverses `x` along `axis` (default last), a gather (differentiable; its own adjoint).
 *
 * @example
 * ```ts
 * import { flip, tensor } from "seqlab";
 * console.log(await flip(tensor([[1, 2, 3]])).toArray()); // [3, 2, 1]
 * ```
 */
export function flip(x: Tensor, axis = -1): Tensor {
  x.check("flip");
  if (x.rank === 0) throw new Error(`flip: ${x.describe()} is a scalar; it has no axis ${axis}`);
  const a = normAxis("flip", axis, x.rank), n = x.shape[a];
  return tidy(() =>
    gather(x, tensor(Array.from({ length: n }, (_, i) => n - 1 - i), { dtype: "i32", device: x.device }), a)
  );
}

/**
 * Vision Mamba's bidirectional scan: (forward(x) + flip(backward(flip(x)))) / 2 along `axis` (default last:
 * the L of (B, D, L)), where `forward` and `backward` are the two directions' SSM branches with their own
 * parameters (conv1d, x_proj, dt_proj, A, D in Vim).
 *
 * @example
 * ```ts
 * import { bidirectional, tensor } from "seqlab";
 * const x = tensor([[[1, 2, 3]]]);
 * // causal running sums forward and backward: each position sees the whole sequence, averaged
 * const y = bidirectional(x, (v) => v.cumsum(-1), (v) => v.cumsum(-1));
 * console.log(await y.toArray()); // [3.5, 4, 4.5]
 * ```
 */
export function bidirectional(
  x: Tensor,
  forward: (x: Tensor) => Tensor,
  backward: (x: Tensor) => Tensor,
  axis = -1,
): Tensor {
  return tidy(() => mul(add(forward(x), flip(backward(flip(x, axis)), axis)), 0.5));
}

/**
 * VMamba's cross-scan (SS2D): x (B, C, H, W) -> (B, 4, C, H * W), the four scan orders of the image:
 * row-major, column-major, and both reversed.
 *
 * @example
 * ```ts
 * import { crossScan, tensor } from "seqlab";
 * const x = tensor([[[[1, 2, 3], [4, 5, 6]]]]); // (1, 1, 2, 3)
 * console.log(await crossScan(x).toNested());
 * // [[[[1, 2, 3, 4, 5, 6]], [[1, 4, 2, 5, 3, 6]], [[6, 5, 4, 3, 2, 1]], [[6, 3, 5, 2, 4, 1]]]]
 * ```
 */
export function crossScan(x: Tensor): Tensor {
  x.check("crossScan");
  if (x.rank !== 4) throw new Error(`crossScan: x must be (B, C, H, W), got ${x.describe()}`);
  const [Bn, C, H, W] = x.shape;
  return tidy(() => {
    const rows = x.reshape([Bn, C, H * W]);
    const cols = contiguous(x.transpose(2, 3)).reshape([Bn, C, H * W]);
    return stack([rows, cols, flip(rows), flip(cols)], 1);
  });
}

/**
 * VMamba's cross-merge: y (B, 4, C, H * W) -> (B, C, H, W), undoing each direction's order and summing.
 * It is the adjoint of {@link crossScan}: <crossScan(x), y> = <x, crossMerge(y)>.
 *
 * @example
 * ```ts
 * import { crossMerge, crossScan, randn } from "seqlab";
 * const x = randn([1, 2, 3, 4], { seed: 1 });
 * console.log(crossMerge(crossScan(x), 3, 4).shape); // [1, 2, 3, 4], equal to 4 x
 * ```
 */
export function crossMerge(y: Tensor, H: number, W: number): Tensor {
  y.check("crossMerge");
  if (y.rank !== 4 || y.shape[1] !== 4 || y.shape[3] !== H * W) {
    throw new Error(`crossMerge: y must be (B, 4, C, H * W) with H * W = ${H * W}, got ${y.describe()}`);
  }
  const [Bn, , C] = y.shape;
  return tidy(() => {
    const dir = (k: number) => y.slice([null, k]); // (B, C, H * W)
    const fromRows = (v: Tensor) => v.reshape([Bn, C, H, W]);
    const fromCols = (v: Tensor) => contiguous(v.reshape([Bn, C, W, H]).transpose(2, 3));
    return add(
      add(fromRows(contiguous(dir(0))), fromCols(contiguous(dir(1)))),
      add(fromRows(flip(dir(2))), fromCols(flip(dir(3)))),
    );
  });
}
