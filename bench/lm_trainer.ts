/**
 * The language-model trainers of `deno task bench train`, written against a seqlab module passed in, so that
 * bench/train_baseline.ts can run another commit's library with them (this file imports no seqlab code).
 * @module
 */

import type * as S from "../mod.ts";
import type { Tensor } from "../mod.ts";

/** A seqlab module: this checkout's mod.ts, or another commit's. */
export type Seqlab = typeof S;

/** What the trainers need of a language model. */
export type Lm = { forward(tokens: Tensor): Tensor; parameters(): Tensor[]; dispose(): void };

/**
 * The bench's LM (2 layers, 4 heads for the Transformer), built from `mod`: this checkout's seqlab, or another
 * commit's mod.ts (bench/train_baseline.ts runs issue 11's baseline with it, without loading this one's).
 */
export function makeLm(mod: Seqlab, kind: "transformer" | "mamba", vocab = 64, d = 64): Lm {
  return kind === "transformer"
    ? new mod.TransformerLM({ vocabSize: vocab, dModel: d, nLayer: 2, nHead: 4, seed: 1, device: "webgpu" })
    : new mod.MambaLM({ vocabSize: vocab, dModel: d, nLayer: 2, seed: 1, device: "webgpu" });
}

/**
 * A trainer for `lm` (AdamW, cross-entropy) on a fixed periodic batch, from `mod` as {@link makeLm}:
 * `step()` returns the loss tensor; `trainStep` (absent where `mod` has none) runs `mod.trainStep`.
 */
export function trainer(mod: Seqlab, lm: Lm, b: number, t: number, vocab: number): {
  step: () => Tensor;
  trainStep?: () => Promise<number>;
  dispose: () => void;
} {
  const opt = new mod.AdamW(lm.parameters(), { lr: 3e-3 });
  const seq = (off: number) =>
    Int32Array.from({ length: b * t }, (_, i) => ((Math.floor(i / t) * 7 + (i % t) + off) * 5) % vocab);
  const x = mod.tensor(seq(0), { shape: [b, t], dtype: "i32", device: "webgpu" });
  const y = mod.tensor(seq(1), { shape: [b * t], dtype: "i32", device: "webgpu" });
  const loss = () => mod.crossEntropy(lm.forward(x).reshape([b * t, vocab]), y);
  return {
    step: (): Tensor =>
      mod.tidy(() => {
        opt.zeroGrad();
        const l = loss();
        l.backward();
        opt.step();
        return l;
      }),
    trainStep: mod.trainStep ? (): Promise<number> => mod.trainStep(opt, loss) : undefined,
    dispose: () => {
      opt.dispose();
      x.dispose();
      y.dispose();
    },
  };
}
