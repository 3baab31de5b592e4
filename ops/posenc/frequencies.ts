/**
 * RoPE inverse frequencies and their context-extension scalings (Position Interpolation, NTK-aware,
 * dynamic NTK, YaRN), computed on the host in float64. Formulas: docs/papers.md,
 * "Long-context survey"; where the survey is silent the Hugging Face `_compute_*_parameters` functions
 * decide (noted per case).
 * @module
 */

/** How to stretch RoPE beyond the training context. `factor` is the scale s = L_new / L_train. */
export type RopeScaling =
  /** Plain RoPE. */
  | { type: "none" }
  /** Position Interpolation: positions m -> m / s (inv_freq / s). */
  | { type: "linear"; factor: number }
  /** NTK-aware: base' = base * s^(D / (D - 2)). */
  | { type: "ntk"; factor: number }
  /**
   * Dynamic NTK: base' = base * ((s L / L_train) - (s - 1))^(D / (D - 2)) for the current length
   * L = `length` > L_train = `originalLength`; plain RoPE while L <= L_train.
   */
  | { type: "dynamic"; factor: number; originalLength: number; length: number }
  /**
   * YaRN: per-frequency ramp between interpolation and extrapolation over the wavelengths that rotate
   * between `betaSlow` (default 1) and `betaFast` (default 32) times in `originalLength`, and the
   * temperature mscale = 0.1 ln s + 1.
   */
  | { type: "yarn"; factor: number; originalLength: number; betaFast?: number; betaSlow?: number };

/** What {@link applyRope} needs: inverse frequencies for pairs (i, i + D/2) and a temperature. */
export interface RopeFrequencies {
  /** Head dim D (even); pairs are (i, i + D/2). */
  readonly dim: number;
  /** The base after scaling (NTK-aware and dynamic NTK change it). */
  readonly base: number;
  /** inv_freq_i for i in [0, D/2), float64. */
  readonly invFreq: Float64Array;
  /** Attention temperature multiplying cos and sin (YaRN's 0.1 ln s + 1; 1 otherwise). */
  readonly mscale: number;
  /** The scaling these frequencies were computed with. */
  readonly scaling: RopeScaling;
}

/** Options for {@link ropeFrequencies}. */
export interface RopeOptions {
  /** RoPE base (default 10000). */
  base?: number;
  /** Context-extension scaling (default none). */
  scaling?: RopeScaling;
}

function positive(what: string, v: unknown): number {
  if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) {
    throw new Error(`ropeFrequencies: ${what} must be a positive finite number, got ${String(v)}`);
  }
  return v;
}

/** inv_freq_i = base^(-2i / D), i in [0, D/2). */
function plain(d: number, base: number): Float64Array {
  const inv = new Float64Array(d / 2);
  for (let i = 0; i < d / 2; i++) inv[i] = base ** (-(2 * i) / d);
  return inv;
}

/**
 * RoPE inverse frequencies for head dim `d` (even) and the attention temperature, for a scaling:
 *
 * - none: inv_freq_i = base^(-2i/d), i in [0, d/2) (rotate-half pairs (i, i + d/2)); mscale 1.
 * - linear (Position Interpolation): inv_freq_i / s, i.e. position m acts as m / s.
 * - ntk (NTK-aware): base' = base * s^(d / (d - 2)), then the plain formula with base'.
 * - dynamic (dynamic NTK): base' = base * ((s L / L_train) - (s - 1))^(d / (d - 2)) when L > L_train, the
 *   plain base otherwise (Hugging Face's rule: no change inside the training context).
 * - yarn: dim(r) = d ln(L_train / (2 pi r)) / (2 ln base); low = max(floor(dim(beta_fast)), 0),
 *   high = min(ceil(dim(beta_slow)), d - 1) (high += 0.001 when equal, as in Hugging Face);
 *   ramp_i = clamp((i - low) / (high - low), 0, 1); inv_freq_i = (inv_i / s) ramp_i + inv_i (1 - ramp_i);
 *   mscale = 0.1 ln s + 1 for s > 1 (else 1), multiplying cos and sin.
 *
 * @example
 * ```ts
 * import { ropeFrequencies } from "seqlab";
 * const f = ropeFrequencies(8);
 * console.log(Array.from(f.invFreq)); // [1, 0.1, 0.01, 0.001]
 * const y = ropeFrequencies(64, { scaling: { type: "yarn", factor: 4, originalLength: 2048 } });
 * console.log(y.mscale.toFixed(4)); // "1.1386"
 * ```
 */
export function ropeFrequencies(d: number, opts: RopeOptions = {}): RopeFrequencies {
  if (!Number.isInteger(d) || d <= 0 || d % 2 !== 0) {
    throw new Error(
      `ropeFrequencies: head dim ${d} must be a positive even integer; RoPE rotates pairs (i, i + d/2)`,
    );
  }
  const base = positive("base", opts.base ?? 10000);
  const scaling: RopeScaling = opts.scaling ?? { type: "none" };
  const ntkExponent = () => {
    if (d <= 2) {
      throw new Error(
        `ropeFrequencies: ${scaling.type} scaling needs d > 2 (exponent d/(d-2)), got d = ${d}`,
      );
    }
    return d / (d - 2);
  };
  switch (scaling.type) {
    case "none":
      return { dim: d, base, invFreq: plain(d, base), mscale: 1, scaling };
    case "linear": {
      const s = positive("factor", scaling.factor);
      return { dim: d, base, invFreq: plain(d, base).map((v) => v / s), mscale: 1, scaling };
    }
    case "ntk": {
      const s = positive("factor", scaling.factor);
      const b = base * s ** ntkExponent();
      return { dim: d, base: b, invFreq: plain(d, b), mscale: 1, scaling };
    }
    case "dynamic": {
      const s = positive("factor", scaling.factor);
      const L0 = positive("originalLength", scaling.originalLength);
      const L = positive("length", scaling.length);
      const b = L > L0 ? base * ((s * L) / L0 - (s - 1)) ** ntkExponent() : base;
      return { dim: d, base: b, invFreq: plain(d, b), mscale: 1, scaling };
    }
    case "yarn": {
      const s = positive("factor", scaling.factor);
      const L0 = positive("originalLength", scaling.originalLength);
      const fast = positive("betaFast", scaling.betaFast ?? 32);
      const slow = positive("betaSlow", scaling.betaSlow ?? 1);
      const dimOf = (r: number) => (d * Math.log(L0 / (2 * Math.PI * r))) / (2 * Math.log(base));
      const low = Math.max(Math.floor(dimOf(fast)), 0);
      let high = Math.min(Math.ceil(dimOf(slow)), d - 1);
      if (high === low) high += 0.001;
      const inv = plain(d, base);
      for (let i = 0; i < d / 2; i++) {
        const ramp = Math.min(Math.max((i - low) / (high - low), 0), 1);
        inv[i] = (inv[i] / s) * ramp + inv[i] * (1 - ramp);
      }
      return { dim: d, base, invFreq: inv, mscale: s > 1 ? 0.1 * Math.log(s) + 1 : 1, scaling };
    }
    default:
      throw new Error(
        `ropeFrequencies: unknown scaling type ${JSON.stringify((scaling as { type: unknown }).type)}; ` +
          `expected none, linear, ntk, dynamic or yarn`,
      );
  }
}
