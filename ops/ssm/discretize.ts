/**
 * Discretization of a diagonal continuous-time SSM x' = A x + B u with step delta, composed from core ops
 * (either device, differentiable). Tensors broadcast: A, B and delta may be (D, N), (D, 1), (B, D, L, 1)...
 * @module
 */

import { type Tensor, tidy } from "../../runtime/tensor.ts";
import { abs, add, div, exp, lt, mul, sub, where } from "../core/elementwise.ts";
import { full } from "../core/creation.ts";

/** A discretization method: exact zero-order hold, bilinear (Tustin), or Mamba's simplified form. */
export type DiscretizeMethod = "zoh" | "bilinear" | "simplified";

/** |delta A| below this uses the Taylor series of (e^x - 1) / x (the ZOH limit delta A -> 0). */
const ZOH_SMALL = 1e-4;

/**
 * (e^x - 1) / x, equal to 1 + x/2 + x^2/6 near 0, with finite gradients everywhere: the unselected branch
 * is evaluated at a safe point, so where's backward never multiplies 0 by NaN.
 *
 * @example
 * ```ts
 * import { expm1OverX, tensor } from "seqlab";
 * console.log(await expm1OverX(tensor([0, 1])).toArray()); // [1, 1.7182817]
 * ```
 */
export function expm1OverX(x: Tensor): Tensor {
  return tidy(() => {
    const small = lt(abs(x), ZOH_SMALL);
    const one = full([], 1, { dtype: x.dtype, device: x.device });
    const xs = where(small, one, x);
    const exact = div(sub(exp(xs), 1), xs);
    const taylor = add(add(mul(x, 0.5), mul(mul(x, x), 1 / 6)), 1);
    return where(small, taylor, exact);
  });
}

/**
 * Discretizes a diagonal real SSM (A, B) with step delta (broadcasting):
 * - `"zoh"` (exact for inputs held constant over the step): A_bar = exp(delta A),
 *   B_bar = (delta A)^-1 (exp(delta A) - 1) delta B, which tends to delta B as delta A -> 0 (handled by
 *   the Taylor series, so A = 0 is fine);
 * - `"bilinear"`: A_bar = (1 + delta A / 2) / (1 - delta A / 2), B_bar = delta B / (1 - delta A / 2);
 * - `"simplified"` (Mamba's reference): A_bar = exp(delta A), B_bar = delta B.
 * Returns `{ Abar, Bbar }`. Complex diagonal systems (S4D-Lin) are discretized by {@link discretizeDiag}.
 *
 * @example
 * ```ts
 * import { discretize, tensor } from "seqlab";
 * const { Abar, Bbar } = discretize(tensor([-1, 0]), tensor([1, 1]), tensor([0.5]), "zoh");
 * console.log(await Abar.toArray(), await Bbar.toArray()); // [0.6065, 1] [0.3935, 0.5]
 * ```
 */
export function discretize(
  A: Tensor,
  B: Tensor,
  delta: Tensor,
  method: DiscretizeMethod = "zoh",
): { Abar: Tensor; Bbar: Tensor } {
  if (!["zoh", "bilinear", "simplified"].includes(method)) {
    throw new Error(
      `discretize: method must be "zoh", "bilinear" or "simplified", got ${JSON.stringify(method)}`,
    );
  }
  return tidy(() => {
    const dA = mul(delta, A), dB = mul(delta, B);
    if (method === "bilinear") {
      const den = sub(1, mul(dA, 0.5));
      return { Abar: div(add(mul(dA, 0.5), 1), den), Bbar: div(dB, den) };
    }
    const Abar = exp(dA);
    return { Abar, Bbar: method === "zoh" ? mul(expm1OverX(dA), dB) : dB };
  });
}
