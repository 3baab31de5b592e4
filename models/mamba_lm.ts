/**
 * The Mamba language model (Gu and Dao, arXiv 2312.00752): token embedding -> nLayer residual blocks
 * x + Mamba(RMSNorm x) -> RMSNorm -> linear head. `forward` runs whole sequences (the parallel scan on
 * WebGPU); `prefill` runs a prompt and returns the recurrent state; `step` advances every sequence of a
 * batch by one token in O(1) time and memory per token, whatever the context length. With
 * `selective: false` every block's SSM is LTI (S4D-Real in the same block), for the S6-versus-S4 runs.
 * @module
 */

import { type DType, isFloat } from "../runtime/dtype.ts";
import type { DeviceName } from "../runtime/device.ts";
import { noGrad } from "../runtime/autograd.ts";
import { type Tensor, tidy } from "../runtime/tensor.ts";
import type { SelectiveScanGpuOptions } from "../ops/ssm/mod.ts";
import { normHeadStep } from "../ops/ssm/mamba_step.ts";
import { Mamba, type MambaState } from "./mamba.ts";
import { Embedding, init, type Initializer, Linear, Module, RMSNorm } from "./nn.ts";

/** Configuration of a {@link MambaLM}; block defaults are the paper's. */
export interface MambaLMConfig {
  /** Vocabulary size V. */
  vocabSize: number;
  /** Model width D. */
  dModel: number;
  /** Number of residual blocks. */
  nLayer: number;
  /** SSM state size N (default 16). */
  dState?: number;
  /** Expansion E: the blocks' inner width is E D (default 2). */
  expand?: number;
  /** Width of the causal depthwise conv (default 4). */
  dConv?: number;
  /** Input-dependent delta, B, C (S6, default true); false = LTI S4D-Real in the same block. */
  selective?: boolean;
  /** RMSNorm epsilon (default 1e-5). */
  eps?: number;
  /** Standard deviation of the embedding's and the head's normal init (default 0.02). */
  initStd?: number;
  /** Options passed to every block's selective scan (version, chunkSize, carry). */
  scan?: Pick<SelectiveScanGpuOptions, "version" | "chunkSize" | "carry">;
  /** Seed of the first parameter (the others follow). */
  seed?: number;
  /** Device of the parameters (default: the default device). */
  device?: DeviceName;
  /** Float dtype of the parameters (default f32). */
  dtype?: DType;
}

/**
 * The recurrent state of a {@link MambaLM}: one {@link MambaState} (conv (B, ED, dConv - 1), ssm
 * (B, ED, N)) per block. A plain object, so `tidy` keeps it when it is returned.
 */
export interface MambaLMState {
  /** Per block. */
  layers: MambaState[];
}

/**
 * A Mamba LM: tokens (B, L) i32 -> logits (B, L, V).
 *
 * Parameters: `embed` (V, D) N(0, 0.02^2); per block `norms.i` (RMSNorm, D) and `mixers.i` (a
 * {@link Mamba} block, its out_proj init scaled by 1 / sqrt(nLayer)); `normF`; `head` (D, V) N(0, 0.02^2),
 * not tied to the embedding.
 *
 * @example
 * ```ts
 * import { MambaLM, tensor } from "seqlab";
 * const lm = new MambaLM({ vocabSize: 10, dModel: 16, nLayer: 2, seed: 1 });
 * const tokens = tensor([[1, 2, 3, 4]], { dtype: "i32" }); // (B, L)
 * console.log(lm.forward(tokens).shape); // [1, 4, 10]
 * const r = lm.step(tensor([1], { dtype: "i32" }), lm.initialState(1)); // (B) -> (B, V)
 * console.log(r.logits.shape, r.state.layers[0].ssm.shape); // [1, 10] [1, 32, 16]
 * lm.dispose();
 * ```
 */
export class MambaLM extends Module {
  /** Token embedding (V, D). */
  embed: Embedding;
  /** RMSNorm before each block. */
  norms: RMSNorm[];
  /** The Mamba blocks (selective or LTI). */
  mixers: Mamba<boolean>[];
  /** Final RMSNorm. */
  normF: RMSNorm;
  /** D -> V, no bias. */
  head: Linear;
  /** The resolved configuration (defaults filled in). */
  readonly config: Readonly<
    Required<Omit<MambaLMConfig, "seed" | "device" | "dtype" | "scan">> & { seed?: number }
  >;

  /** Creates the model's parameters. */
  constructor(cfg: MambaLMConfig) {
    super();
    const V = cfg.vocabSize, D = cfg.dModel, L = cfg.nLayer;
    for (const [n, v] of [["vocabSize", V], ["dModel", D], ["nLayer", L]] as const) {
      if (!Number.isInteger(v) || v < 1) {
        throw new Error(`MambaLM: ${n} must be a positive integer, got ${v}`);
      }
    }
    const eps = cfg.eps ?? 1e-5, initStd = cfg.initStd ?? 0.02;
    this.config = {
      vocabSize: V,
      dModel: D,
      nLayer: L,
      dState: cfg.dState ?? 16,
      expand: cfg.expand ?? 2,
      dConv: cfg.dConv ?? 4,
      selective: cfg.selective ?? true,
      eps,
      initStd,
      seed: cfg.seed,
    };
    const o = { device: cfg.device, dtype: cfg.dtype };
    const seed = (k: number) => (cfg.seed === undefined ? undefined : cfg.seed + 1000 * k);
    const normal: Initializer = (s, io) => init.normal(s, { ...io, std: initStd });
    this.embed = new Embedding(V, D, { ...o, seed: seed(0), weightInit: normal });
    this.norms = Array.from({ length: L }, () => new RMSNorm(D, { ...o, eps }));
    this.mixers = Array.from({ length: L }, (_, i) =>
      new Mamba<boolean>({
        ...o,
        dModel: D,
        dState: this.config.dState,
        expand: this.config.expand,
        dConv: this.config.dConv,
        selective: this.config.selective,
        nLayer: L,
        scan: cfg.scan,
        seed: seed(1 + i),
      }));
    this.normF = new RMSNorm(D, { ...o, eps });
    this.head = new Linear(D, V, { ...o, bias: false, seed: seed(1 + L), weightInit: normal });
  }

  #checkTokens(op: string, tokens: Tensor, rank: number): void {
    tokens.check(`MambaLM.${op}`);
    if (tokens.rank !== rank || isFloat(tokens.dtype)) {
      throw new Error(
        `MambaLM.${op}: tokens must be ${rank === 2 ? "(B, L)" : "(B)"} i32 or u32, got ${tokens.describe()}`,
      );
    }
    if (tokens.device !== this.embed.weight.device) {
      throw new Error(
        `MambaLM.${op}: tokens are on ${tokens.device} but the model is on ${this.embed.weight.device}`,
      );
    }
  }

  /** Logits (B, L, V) of tokens (B, L): every position predicts the next token. */
  forward(tokens: Tensor): Tensor {
    this.#checkTokens("forward", tokens, 2);
    return tidy(() => {
      let x = this.embed.forward(tokens); // (B, L, D)
      this.mixers.forEach((m, i) => (x = x.add(m.forward(this.norms[i].forward(x)))));
      return this.head.forward(this.normF.forward(x)); // (B, L, V)
    });
  }

  /**
   * Runs a prompt (B, L) from the empty state: the logits (B, L, V) and the state after its last token,
   * to continue with {@link MambaLM.step}. Inference only (no gradients).
   *
   * @example
   * ```ts
   * import { MambaLM, tensor } from "seqlab";
   * const lm = new MambaLM({ vocabSize: 6, dModel: 8, nLayer: 1, seed: 1 });
   * const { logits, state } = lm.prefill(tensor([[1, 2, 3]], { dtype: "i32" }));
   * console.log(logits.shape, state.layers.length); // [1, 3, 6] 1
   * lm.disposeState(state);
   * lm.dispose();
   * ```
   */
  prefill(tokens: Tensor): { logits: Tensor; state: MambaLMState } {
    this.#checkTokens("prefill", tokens, 2);
    return noGrad(() =>
      tidy(() => {
        let x = this.embed.forward(tokens); // (B, L, D)
        const layers = this.mixers.map((m, i) => {
          const r = m.prefill(this.norms[i].forward(x)); // (B, L, D)
          x = x.add(r.y);
          return r.state;
        });
        return { logits: this.head.forward(this.normF.forward(x)), state: { layers } }; // (B, L, V)
      })
    );
  }

  /** The state before any token (zeros) for `batch` sequences. */
  initialState(batch: number): MambaLMState {
    if (!Number.isInteger(batch) || batch < 1) {
      throw new Error(`MambaLM.initialState: batch must be a positive integer, got ${batch}`);
    }
    return { layers: this.mixers.map((m) => m.initialState(batch)) };
  }

  /**
   * One token per sequence: tokens (B) and the state -> `{ logits (B, V), state }`, a new state (the old
   * one is left to the caller: free it with {@link MambaLM.disposeState} when no longer needed).
   * Stepping through a sequence equals {@link MambaLM.forward} on it. Inference only.
   */
  step(tokens: Tensor, state: MambaLMState): { logits: Tensor; state: MambaLMState } {
    this.#checkTokens("step", tokens, 1);
    const B = tokens.shape[0];
    if (!state || !Array.isArray(state.layers) || state.layers.length !== this.mixers.length) {
      throw new Error(
        `MambaLM.step: state must have one entry per block (${this.mixers.length}); use initialState or prefill`,
      );
    }
    const sb = state.layers[0].ssm.shape[0];
    if (sb !== B) throw new Error(`MambaLM.step: tokens have batch ${B} but the state has batch ${sb}`);
    return noGrad(() =>
      tidy(() => {
        let x = this.embed.forward(tokens); // (B, D)
        const layers = this.mixers.map((m, i) => {
          const r = m.stepResidual(x, state.layers[i], this.norms[i]); // x + block(norm x): (B, D)
          x = r.y;
          return r.state;
        });
        // the final norm and the head in one dispatch where it can (a bias-free head)
        const logits = this.head.bias
          ? this.head.forward(this.normF.forward(x))
          : normHeadStep(x, this.normF.weight, this.normF.eps, this.head.weight);
        return { logits, state: { layers } }; // (B, V)
      })
    );
  }

  /**
   * Frees a state's tensors.
   *
   * @example
   * ```ts
   * import { MambaLM } from "seqlab";
   * const lm = new MambaLM({ vocabSize: 4, dModel: 8, nLayer: 1 });
   * const st = lm.initialState(2);
   * lm.disposeState(st);
   * console.log(st.layers[0].ssm.disposed); // true
   * lm.dispose();
   * ```
   */
  disposeState(state: MambaLMState): void {
    for (const l of state.layers) {
      l.conv.dispose();
      l.ssm.dispose();
    }
  }
}
