/**
 * The experiments of notebooks/07_vision_attention.ipynb (attention in vision: Guo et al., arXiv 2111.07624)
 * at toy scale, kept out of the notebook's cells: the model zoo (a small ResNet with each attention module,
 * a ViT, a Vim and a VMamba), one Adam training loop and a test-set evaluation, what each module attends to
 * (channel weights per class, CBAM's spatial maps, a non-local map, ViT's attention rollout), the cost of
 * attention and scans against image size, and the closing table's verdicts as functions of the numbers.
 *
 * Images are (B, 1, S, S) Fashion-MNIST, optionally average-pooled on the host ({@link downsample}) so that
 * 24 training runs fit the notebook's ten minutes on a software WebGPU adapter.
 * @module
 */

import * as s from "../mod.ts";
import type { ImageSplit, Module, Tensor } from "../mod.ts";
import { type BasicBlock, ResNet, type VisionAttention } from "../models/vision/resnet.ts";
import { ViT } from "../models/vision/vit_model.ts";
import { Vim, VimBlock } from "../models/vision/vim.ts";
import { SS2D, VMamba } from "../models/vision/vmamba.ts";
import { median } from "./util.ts";

// ---------------------------------------------------------------------------------------------------------
// data

/**
 * A split with every image average-pooled over `factor` x `factor` blocks (28 -> 14 for factor 2), pixels
 * rounded back to bytes, so that {@link s.imageBatches} and normalisation work unchanged.
 */
export function downsample(split: ImageSplit, factor: number): ImageSplit {
  if (factor === 1) return split;
  const { height: H, width: W, count } = split;
  if (!Number.isInteger(factor) || factor < 1 || H % factor || W % factor) {
    throw new Error(`downsample: factor ${factor} must be a positive integer dividing ${H}x${W}`);
  }
  const h = H / factor, w = W / factor, px = new Uint8Array(count * h * w);
  for (let n = 0; n < count; n++) {
    for (let i = 0; i < h; i++) {
      for (let j = 0; j < w; j++) {
        let acc = 0;
        for (let a = 0; a < factor; a++) {
          for (let b = 0; b < factor; b++) {
            acc += split.pixels[n * H * W + (i * factor + a) * W + j * factor + b];
          }
        }
        px[n * h * w + i * w + j] = Math.round(acc / (factor * factor));
      }
    }
  }
  return { ...split, height: h, width: w, pixels: px };
}

// ---------------------------------------------------------------------------------------------------------
// models

/** What every model of the zoo offers: logits from images, forward FLOPs per batch, parameters. */
export type Classifier = Module & { forward(x: Tensor): Tensor; flops(batch?: number): number };

/** Sizes of the zoo's models. */
export interface ZooSizes {
  /** Image side S (square, 1 channel). */
  imageSize: number;
  /** ResNet stage widths (SE's r = 16 needs at least 16). */
  widths: number[];
  /** ViT: patch side, width, layers, heads. */
  vit: { patch: number; d: number; layers: number; heads: number };
  /** Vim: patch side, width, layers. */
  vim: { patch: number; d: number; layers: number };
  /** VMamba: patch side, stage widths, blocks per stage. */
  vmamba: { patch: number; dims: number[]; depths: number[] };
}

/** The ResNet variants in the order of the tables, and the attention each carries. */
export const RESNETS: Record<string, VisionAttention> = {
  "ResNet": "none",
  "+SE": "se",
  "+ECA": "eca",
  "+CBAM": "cbam",
  "+non-local": "nonlocal",
};

/** Builds the zoo's model `name` (a key of {@link RESNETS}, or "ViT", "Vim", "VMamba") with `seed`. */
export function buildModel(name: string, z: ZooSizes, seed: number): Classifier {
  const S = z.imageSize, numClasses = 10;
  if (name in RESNETS) {
    return new ResNet({
      numClasses,
      widths: z.widths,
      depths: z.widths.map(() => 1),
      attention: RESNETS[name],
      seed,
    });
  }
  if (name === "ViT") {
    const v = z.vit;
    return new ViT({
      imageSize: S,
      patchSize: v.patch,
      numClasses,
      dModel: v.d,
      nLayer: v.layers,
      nHead: v.heads,
      seed,
    });
  }
  if (name === "Vim") {
    return new Vim({
      imageSize: S,
      patchSize: z.vim.patch,
      numClasses,
      dModel: z.vim.d,
      nLayer: z.vim.layers,
      seed,
    });
  }
  if (name === "VMamba") {
    const v = z.vmamba;
    return new VMamba({ imageSize: S, patchSize: v.patch, numClasses, dims: v.dims, depths: v.depths, seed });
  }
  throw new Error(`buildModel: unknown model ${JSON.stringify(name)}`);
}

// ---------------------------------------------------------------------------------------------------------
// training and evaluation

/** Training settings. */
export interface TrainOptions {
  /** Steps, one batch each. */
  steps: number;
  /** Images per batch. */
  batchSize: number;
  /** Peak learning rate (Adam; linear warmup, then cosine decay to lr / 10). */
  lr: number;
  /** Warmup steps. */
  warmup: number;
  /** Seed of the batch order (the model's own seed is separate). */
  seed: number;
  /**
   * Read the loss back every `logEvery` steps. A readback waits for the adapter, yet on lavapipe reading every
   * step trained 1.2-1.8x faster than every 10th (measured: the deferred steps' buffers pile up unreused).
   */
  logEvery: number;
  /** Called after each logged step. */
  onLog?: (step: number, loss: number) => void;
}

/** What {@link trainClassifier} returns. */
export interface TrainResult {
  /** [step, loss] at each logged step (nats). */
  log: [number, number][];
  /** Wall time of the loop, s. */
  seconds: number;
}

/**
 * Trains `model` with Adam on `o.steps` seeded batches of `data` (cross-entropy, pixels normalised by the
 * dataset's statistics, no augmentation), in training mode (batch statistics for BatchNorm).
 */
export async function trainClassifier(
  model: Classifier,
  data: ImageSplit,
  o: TrainOptions,
): Promise<TrainResult> {
  model.train();
  const opt = new s.Adam(model.parameters(), {
    lr: s.cosineSchedule(o.lr, o.steps, { warmup: o.warmup, minLr: o.lr / 10 }),
  });
  const log: TrainResult["log"] = [];
  const t0 = performance.now();
  let step = 0;
  for (let epoch = 0; step < o.steps; epoch++) {
    for (
      const { x, y } of s.imageBatches(data, {
        batchSize: o.batchSize,
        seed: o.seed,
        epoch,
        normalize: true,
        dropLast: true,
      })
    ) {
      step++;
      const loss = s.tidy(() => {
        opt.zeroGrad();
        const l = s.crossEntropy(model.forward(x), y);
        l.backward();
        opt.step();
        return l;
      });
      x.dispose();
      y.dispose();
      if (step % o.logEvery === 0 || step === o.steps) {
        const v = await loss.item();
        log.push([step, v]);
        o.onLog?.(step, v);
      }
      loss.dispose();
      if (step >= o.steps) break;
    }
  }
  opt.zeroGrad();
  opt.dispose();
  return { log, seconds: (performance.now() - t0) / 1000 };
}

/** Test accuracy of `model` in evaluation mode (running BatchNorm statistics), `batch` images per forward. */
export async function evaluateClassifier(
  model: Classifier,
  test: ImageSplit,
  batch = 250,
): Promise<{ accuracy: number; perClass: number[] }> {
  model.eval();
  const hit = new Array(10).fill(0), tot = new Array(10).fill(0);
  for (const { x, y } of s.imageBatches(test, { batchSize: batch, shuffle: false, normalize: true })) {
    const p = s.noGrad(() => s.tidy(() => s.argmax(model.forward(x), -1)));
    const pred = await p.toArray(), lab = await y.toArray();
    for (let i = 0; i < pred.length; i++) {
      tot[lab[i]]++;
      if (pred[i] === lab[i]) hit[lab[i]]++;
    }
    for (const t of [x, y, p]) t.dispose();
  }
  model.train();
  const n = tot.reduce((a, b) => a + b, 0);
  return {
    accuracy: hit.reduce((a, b) => a + b, 0) / n,
    perClass: hit.map((h, c) => (tot[c] ? h / tot[c] : NaN)),
  };
}

// ---------------------------------------------------------------------------------------------------------
// what the modules attend to (evaluation mode, no gradient)

/** The ResNet's activations entering block `block` of stage `stage` (stem and earlier stages applied). */
function resnetInput(m: ResNet, x: Tensor, stage: number, block: number): Tensor {
  let h = m.stemBn.forward(m.stem.forward(x)).relu();
  for (let i = 0; i < stage; i++) h = m.stages[i].forward(h);
  for (let j = 0; j < block; j++) h = m.stages[stage].blocks[j].forward(h);
  return h;
}

/** A basic block's residual branch before its attention module: bn2(conv2(relu(bn1(conv1 x)))). */
function branch(b: BasicBlock, x: Tensor): Tensor {
  return b.bn2.forward(b.conv2.forward(b.bn1.forward(b.conv1.forward(x)).relu()));
}

/**
 * SE's or ECA's channel weights in the first block of each stage, averaged over the test images of each
 * class: one (classes x C) matrix per stage.
 */
export async function channelWeightsByClass(m: ResNet, test: ImageSplit, batch = 250): Promise<number[][][]> {
  m.eval();
  const stages = m.stages.length, sums: number[][][] = [], counts = new Array(10).fill(0);
  for (const { x, y } of s.imageBatches(test, { batchSize: batch, shuffle: false, normalize: true })) {
    const lab = await y.toArray();
    for (const l of lab) counts[l]++;
    for (let st = 0; st < stages; st++) {
      const b = m.stages[st].blocks[0];
      const w = s.noGrad(() =>
        s.tidy(() => {
          const attn = b.attn as unknown as {
            forwardWithAttention(h: Tensor): { y: Tensor; weights: Tensor };
          };
          return attn.forwardWithAttention(branch(b, resnetInput(m, x, st, 0))).weights; // (N, C)
        })
      );
      const C = w.shape[1], a = await w.toArray();
      sums[st] ??= Array.from({ length: 10 }, () => new Array(C).fill(0));
      for (let i = 0; i < lab.length; i++) for (let c = 0; c < C; c++) sums[st][lab[i]][c] += a[i * C + c];
      w.dispose();
    }
    x.dispose();
    y.dispose();
  }
  m.train();
  return sums.map((rows) => rows.map((r, k) => r.map((v) => v / counts[k])));
}

/**
 * How class-specific a (classes x C) matrix of mean channel weights is: the standard deviation across
 * classes of each channel's weight, averaged over channels (0 when every class gets the same weights).
 */
export function classSpread(m: number[][]): number {
  const C = m[0].length, K = m.length;
  let acc = 0;
  for (let c = 0; c < C; c++) {
    const col = m.map((r) => r[c]), mu = col.reduce((a, b) => a + b, 0) / K;
    acc += Math.sqrt(col.reduce((a, b) => a + (b - mu) ** 2, 0) / K);
  }
  return acc / C;
}

/** The first `n` test images (pixels in [0, 1], (n, S, S) as nested arrays) and their labels. */
export function firstImages(test: ImageSplit, n: number): { images: number[][][]; labels: number[] } {
  const S = test.height, P = S * test.width;
  const images = Array.from(
    { length: n },
    (_, k) =>
      Array.from(
        { length: S },
        (_, i) => Array.from(test.pixels.subarray(k * P + i * S, k * P + (i + 1) * S), (v) => v / 255),
      ),
  );
  return { images, labels: Array.from(test.labels.subarray(0, n)) };
}

/** A (N, h, w) tensor's values as N nested h x w arrays. */
async function maps3(t: Tensor): Promise<number[][][]> {
  const [N, h, w] = t.shape, a = await t.toArray();
  return Array.from(
    { length: N },
    (_, n) =>
      Array.from({ length: h }, (_, i) => Array.from({ length: w }, (_, j) => a[n * h * w + i * w + j])),
  );
}

/** The first `n` test images as a normalised (n, 1, S, S) batch. */
function batchOf(test: ImageSplit, n: number): Tensor {
  return s.imageTensors(test, { normalize: true, indices: Int32Array.from({ length: n }, (_, i) => i) }).x;
}

/** CBAM's spatial maps Ms (n, S, S) in the first block of stage `stage` for the first `n` test images. */
export async function cbamSpatialMaps(
  m: ResNet,
  test: ImageSplit,
  n: number,
  stage = 0,
): Promise<number[][][]> {
  m.eval();
  const x = batchOf(test, n);
  const b = m.stages[stage].blocks[0];
  const sp = s.noGrad(() =>
    s.tidy(() => {
      const cbam = b.attn as unknown as s.CBAM;
      const r = cbam.forwardWithAttention(branch(b, resnetInput(m, x, stage, 0)));
      return r.spatial.reshape([n, r.spatial.shape[2], r.spatial.shape[3]]);
    })
  );
  const out = await maps3(sp);
  sp.dispose();
  x.dispose();
  m.train();
  return out;
}

/** The non-local block's attention map (n, h, w) of the query pixel `query` for the first `n` test images. */
export async function nonLocalMaps(
  m: ResNet,
  test: ImageSplit,
  n: number,
  query?: [number, number],
): Promise<number[][][]> {
  m.eval();
  const x = batchOf(test, n);
  const st = m.stages.findIndex((t) => t.after instanceof s.NonLocal);
  if (st < 0) throw new Error("nonLocalMaps: the model carries no non-local block");
  const map = s.noGrad(() =>
    s.tidy(() => (m.stages[st].after as s.NonLocal).forwardWithAttention(stageBlocks(m, x, st), query).map)
  );
  const out = await maps3(map);
  map.dispose();
  x.dispose();
  m.train();
  return out;
}

/** The activations after the blocks of stage `st` (before what the stage places after them). */
function stageBlocks(m: ResNet, x: Tensor, st: number): Tensor {
  let h = resnetInput(m, x, st, 0);
  for (const b of m.stages[st].blocks) h = b.forward(h);
  return h;
}

/**
 * ViT's attention rollout from the class token to every patch, (n, S / p, S / p), for the first `n` test
 * images: row 0 of {@link s.attentionRollout} over all layers, without the class token's own column.
 */
export async function vitRollout(m: ViT, test: ImageSplit, n: number): Promise<number[][][]> {
  const x = batchOf(test, n);
  const [H, W] = m.config.imageSize, p = m.config.patchSize;
  const r = s.noGrad(() =>
    s.tidy(() => {
      const { attention } = m.forwardWithAttention(x);
      const R = s.attentionRollout(attention); // (n, T, T)
      return R.slice([null, 0, [1, R.shape[2]]]).reshape([n, H / p, W / p]);
    })
  );
  const out = await maps3(r);
  r.dispose();
  x.dispose();
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// cost against image size

/** One mixer measured by {@link costSweep}. */
export interface CostRow {
  /** The mixer's name. */
  mixer: string;
  /** Image side S. */
  size: number;
  /** Tokens (positions) the mixer sees: (S / patch)^2. */
  tokens: number;
  /** Median forward ms (batch 1, one readback per call). */
  ms: number;
  /** Peak bytes above what was in use before the call (the input excluded). */
  peakBytes: number;
  /** The mixer's forward FLOPs. */
  flops: number;
  /** Why the call failed (an allocation over the adapter's limit), if it did; ms and peakBytes are NaN. */
  error?: string;
}

/**
 * Forward time and peak memory at batch 1 of one layer of each mixer on the (S / patch) x (S / patch)
 * token grid of an S x S image, width `d`: the non-local block (C = d), ViT's multi-head attention (4 heads,
 * plus a class token), ViT's attention also returning its (1, H, T, T) maps (as rollout needs), a Vim
 * block (both directions) and VMamba's SS2D (4 scans). Synthetic inputs; each point is the median of
 * `trials` calls after one warm-up call.
 */
export async function costSweep(
  sizes: number[],
  o: { patch: number; d: number; trials: number },
): Promise<CostRow[]> {
  const d = o.d, rows: CostRow[] = [];
  const nl = new s.NonLocal(d, { seed: 1 });
  const att = new s.ViTAttention(d, 4, { seed: 2 });
  const vim = new VimBlock(d, 2 * d, 16, 4, Math.ceil(d / 16), { seed: 3, nLayer: 1 });
  const ss2d = new SS2D(d, { seed: 4 });
  for (const S of sizes) {
    const g = S / o.patch, P = g * g;
    if (!Number.isInteger(g)) throw new Error(`costSweep: patch ${o.patch} does not divide ${S}`);
    const mixers: [string, Tensor, (x: Tensor) => Tensor[], number][] = [
      ["non-local", s.randn([1, d, g, g], { seed: 5 }), (x) => [nl.forward(x)], nl.flops([1, d, g, g])],
      [
        "ViT attention",
        s.randn([1, P + 1, d], { seed: 6 }),
        (x) => [att.forward(x)],
        att.flops([1, P + 1, d]),
      ],
      ["ViT attention + maps", s.randn([1, P + 1, d], { seed: 6 }), (x) => {
        const r = att.forwardWithAttention(x);
        return [r.y, r.attention];
      }, att.flops([1, P + 1, d])],
      ["Vim block", s.randn([1, P, d], { seed: 7 }), (x) => [vim.forward(x)], vimBlockFlops(d, P)],
      ["VMamba SS2D", s.randn([1, g, g, d], { seed: 8 }), (x) => [ss2d.forward(x)], ss2d.flops(g, g)],
    ];
    for (const [mixer, x, f, flops] of mixers) {
      const call = async () => {
        const base = s.memory().bytesInUse;
        s.resetPeak();
        const t0 = performance.now();
        const outs = s.noGrad(() => s.tidy(() => f(x)));
        await outs[0].toArray();
        const ms = performance.now() - t0, peak = s.memory().peakBytes - base;
        for (const t of outs) t.dispose();
        return { ms, peak };
      };
      try {
        await call(); // compiles
      } catch (e) {
        // the (1, H, T, T) maps outgrow the adapter's largest storage buffer: recorded, not timed
        if (!(e instanceof s.WebGPUError)) throw e;
        rows.push({ mixer, size: S, tokens: P, ms: NaN, peakBytes: NaN, flops, error: (e as Error).message });
        x.dispose();
        continue;
      }
      const runs = [];
      for (let t = 0; t < o.trials; t++) runs.push(await call());
      rows.push({
        mixer,
        size: S,
        tokens: P,
        ms: median(runs.map((r) => r.ms)),
        peakBytes: Math.max(...runs.map((r) => r.peak)),
        flops,
      });
      x.dispose();
    }
  }
  for (const m of [nl, att, vim, ss2d]) m.dispose();
  return rows;
}

/** A Vim block's forward FLOPs on (1, L, D) with E = 2 D, N = 16, conv 4 (as {@link Vim.flops} counts). */
function vimBlockFlops(D: number, L: number): number {
  const E = 2 * D, N = 16, W = 4, R = Math.ceil(D / 16);
  const dir = 2 * L * E * W + 2 * L * E * (R + 2 * N) + 2 * L * R * E +
    s.scanCost({ Bn: 1, D: E, N, L }).flops;
  return 2 * L * D * 2 * E + 2 * dir + 2 * L * E * D;
}

/** Least-squares slope of log(y) against log(x). */
export function logLogSlope(x: number[], y: number[]): number {
  const lx = x.map(Math.log), ly = y.map(Math.log), n = x.length;
  const mx = lx.reduce((a, b) => a + b, 0) / n, my = ly.reduce((a, b) => a + b, 0) / n;
  let num = 0, den = 0;
  for (let i = 0; i < n; i++) {
    num += (lx[i] - mx) * (ly[i] - my);
    den += (lx[i] - mx) ** 2;
  }
  return num / den;
}

// ---------------------------------------------------------------------------------------------------------
// statistics and verdicts

/** Mean and sample standard deviation (NaN for fewer than 2 values). */
export function meanStd(xs: number[]): { mean: number; std: number } {
  const n = xs.length, mean = xs.reduce((a, b) => a + b, 0) / n;
  const std = n > 1 ? Math.sqrt(xs.reduce((a, b) => a + (b - mean) ** 2, 0) / (n - 1)) : NaN;
  return { mean, std };
}

/**
 * A module's accuracy gain over the baseline, seed for seed (the same seed gives both models the same batches
 * and the same stem and block initialisation): the mean paired difference and its standard error.
 */
export function pairedGain(module: number[], baseline: number[]): { gain: number; se: number } {
  const d = module.map((v, i) => v - baseline[i]);
  const { mean, std } = meanStd(d);
  return { gain: mean, se: std / Math.sqrt(d.length) };
}

/** "gain", "loss" or "within noise": whether |gain| exceeds 2 standard errors of the paired difference. */
export function gainVerdict(g: { gain: number; se: number }): "gain" | "loss" | "within noise" {
  if (!(g.se >= 0)) return "within noise";
  if (g.gain > 2 * g.se && g.gain > 0) return "gain";
  if (g.gain < -2 * g.se && g.gain < 0) return "loss";
  return "within noise";
}

/** A verdict, or "quick mode: not judged" when `quick`. */
export function judge(quick: boolean, v: () => string): string {
  return quick ? "quick mode: not judged" : v();
}

/** Forward FLOPs per image of a zoo model on S x S images (the ResNet counts at the size it is given). */
export function modelFlops(m: Classifier, S: number): number {
  return m instanceof ResNet ? m.flops(1, S, S) : m.flops(1);
}

/**
 * The paper's ordering of the modules by ImageNet top-1 against ours by mean test accuracy: "reproduced"
 * only when every module's paired gain over the baseline is a gain beyond noise and the order matches;
 * "not shown at this scale" when no module's gain or loss exceeds the noise.
 */
export function orderingVerdict(
  paperOrder: string[],
  mean: Record<string, number>,
  gains: Record<string, { gain: number; se: number }>,
): string {
  const ours = [...paperOrder].sort((a, b) => mean[b] - mean[a]);
  const same = ours.every((n, i) => n === paperOrder[i]);
  const v = Object.values(gains).map(gainVerdict);
  if (v.every((x) => x === "gain") && same) return "reproduced";
  if (v.every((x) => x === "within noise")) {
    return `not shown at this scale: every module's gain is within 2 standard errors of the seeds' spread${
      same ? " (the means happen to fall in the paper's order)" : ""
    }`;
  }
  if (v.some((x) => x === "loss")) return "not reproduced: a module is below the baseline beyond the noise";
  return same ? "trend reproduced, not every gain beyond noise" : "not reproduced: the order differs";
}

/** Plotly traces and layout for a grid of heatmaps (`panels[r][c]`, each a z matrix and a title). */
export function heatmapGrid(
  panels: { z: number[][]; title: string; colorscale?: string; zmin?: number; zmax?: number }[][],
  o: { title: string; cell?: number },
): { data: Record<string, unknown>[]; layout: Record<string, unknown> } {
  const rows = panels.length, cols = Math.max(...panels.map((r) => r.length)), cell = o.cell ?? 150;
  const data: Record<string, unknown>[] = [],
    layout: Record<string, unknown> = {
      title: { text: o.title },
      grid: { rows, columns: cols, pattern: "independent" },
      height: rows * cell + 80,
      width: cols * cell + 60,
      margin: { t: 60, l: 20, r: 20, b: 20 },
      annotations: [] as unknown[],
    };
  panels.forEach((row, r) =>
    row.forEach((p, c) => {
      const k = r * cols + c + 1, ax = k === 1 ? "" : String(k);
      data.push({
        type: "heatmap",
        z: p.z,
        xaxis: `x${ax}`,
        yaxis: `y${ax}`,
        colorscale: p.colorscale ?? "Viridis",
        zmin: p.zmin,
        zmax: p.zmax,
        showscale: false,
      });
      layout[`xaxis${ax}`] = { visible: false };
      layout[`yaxis${ax}`] = { visible: false, autorange: "reversed", scaleanchor: `x${ax}` };
      (layout.annotations as unknown[]).push({
        text: p.title,
        xref: `x${ax} domain`,
        yref: `y${ax} domain`,
        x: 0.5,
        y: 1.12,
        showarrow: false,
        font: { size: 11 },
      });
    })
  );
  return { data, layout };
}
