/**
 * Shared checks for image models (models/vision): the same model on cpu and webgpu gives the same logits
 * and gradients, and a few Adam steps fit a toy batch whose label is the side of one bright pixel.
 */
import { expect } from "vitest";
import * as s from "../mod.ts";
import type { JambaLMConfig, Module, Tensor } from "../mod.ts";
import { assertClose } from "./helpers.ts";

const arr = async (t: Tensor) => Array.from(await t.toArray());

/**
 * Runs `cpu` and `gpu` (the same configuration, one per device) on x, backpropagates sum(out^2), and checks
 * the outputs and every parameter's gradient agree (and that every parameter gets a nonzero gradient).
 */
export async function backendsAgree(
  cpu: Module & { forward(x: Tensor): Tensor },
  gpu: Module & { forward(x: Tensor): Tensor },
  x: Tensor,
): Promise<void> {
  const run = async (m: typeof cpu, xx: Tensor) => {
    const out = m.forward(xx);
    out.mul(out).sum().backward();
    const grads = await Promise.all(m.parameters().map(async (p) => await arr(p.grad!)));
    for (const p of m.parameters()) p.zeroGrad();
    return { out: await arr(out), grads };
  };
  const xg = await x.to("webgpu");
  const a = await run(cpu, x), b = await run(gpu, xg);
  xg.dispose();
  assertClose(b.out, a.out, { atol: 2e-4, rtol: 2e-3 });
  const names = cpu.namedParameters().map(([n]) => n);
  a.grads.forEach((g, i) => {
    expect(g.some((v) => v !== 0), `${names[i]} gets a gradient`).toBe(true);
    try {
      assertClose(b.grads[i], g, { atol: 5e-4, rtol: 5e-3 });
    } catch (e) {
      throw new Error(`${names[i]}: ${(e as Error).message}`);
    }
  });
}

/**
 * Trains `m` (on webgpu, 8x8 single-channel images, 2 classes) for `steps` Adam steps on 16 images whose
 * label is the side (left or right column) of their one bright pixel; returns the first and last losses.
 */
export async function fitSideTask(
  m: Module & { forward(x: Tensor): Tensor },
  steps = 60,
  lr = 1e-2,
): Promise<{ first: number; last: number }> {
  const B = 16;
  const img = new Float32Array(B * 64), lab = new Int32Array(B);
  for (let b = 0; b < B; b++) {
    lab[b] = b % 2;
    img[b * 64 + ((b * 3) % 8) * 8 + (lab[b] ? 7 : 0)] = 3;
  }
  const x = s.tensor(img, { shape: [B, 1, 8, 8], device: "webgpu" });
  const y = s.tensor(lab, { dtype: "i32", device: "webgpu" });
  const opt = new s.Adam(m.parameters(), { lr });
  const losses: number[] = [];
  for (let i = 0; i < steps; i++) {
    const l = s.tidy(() => {
      opt.zeroGrad();
      const loss = s.crossEntropy(m.forward(x), y);
      loss.backward();
      opt.step();
      return loss;
    });
    losses.push(await l.item());
    l.dispose();
  }
  opt.dispose();
  x.dispose();
  y.dispose();
  return { first: losses[0], last: losses[steps - 1] };
}

/**
 * The tiny JambaLM the Jamba tests share: 4 layers in one block at attention:Mamba 1:3 (attention at
 * layer 2), MoE of 4 experts (top 2) at layers 1 and 3, GQA 4:2, N 4; `over` sets the rest (vocab, seed,
 * mixer, device).
 */
export function tinyJamba(over: Partial<JambaLMConfig> & { vocabSize: number }): JambaLMConfig {
  return {
    dModel: 16,
    nLayer: 4,
    blockLayers: 4,
    attnRatio: [1, 3],
    nExperts: 4,
    topK: 2,
    dFf: 24,
    nHead: 4,
    nKvHead: 2,
    dState: 4,
    seed: 3,
    ...over,
  };
}
