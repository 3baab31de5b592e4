/**
 * Ops that fail: the Tensor method table when an op module was not loaded, the memory ledger after an op
 * throws (nothing stays allocated), and shader diagnostics (an out-of-range index prints as its dtype reads,
 * and what the failing batch computed throws when read).
 * @module
 */

import { describe, expect, it } from "vitest";
import {
  add,
  div,
  full,
  gather,
  logSumExp,
  maximum,
  memory,
  mul,
  scatterAdd,
  sub,
  sum,
  type Tensor,
  tensor,
  WebGPUError,
  where,
} from "../mod.ts";
import type { DeviceName } from "../runtime/device.ts";
import { leakCheck, requireDevice, requireGpu } from "./helpers.ts";

leakCheck();

const ROOT = new URL("..", import.meta.url);

/** Runs `code` as a module of its own (a fresh process, so only what it imports is loaded). */
async function runScript(code: string): Promise<{ ok: boolean; out: string; err: string }> {
  const path = await Deno.makeTempFile({ suffix: ".ts" });
  try {
    await Deno.writeTextFile(path, code);
    const r = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--quiet", "--config", new URL("deno.json", ROOT).pathname, path],
      stdout: "piped",
      stderr: "piped",
      env: { SEQLAB_DEVICE: "cpu" },
    }).output();
    const dec = new TextDecoder();
    return { ok: r.success, out: dec.decode(r.stdout), err: dec.decode(r.stderr) };
  } finally {
    await Deno.remove(path);
  }
}

describe("the Tensor method table", () => {
  it("a script importing only models/nn.ts can call the tensor methods it uses", async () => {
    const nn = new URL("models/nn.ts", ROOT).href;
    const r = await runScript(`
import { Dropout, Embedding, GELU, init, LayerNorm, Linear, ReLU, RMSNorm, Sequential, Tanh } from "${nn}";
const o = { device: "cpu" as const, seed: 1 };
const net = new Sequential(
  new Linear(3, 8, o), new LayerNorm(8, o), new ReLU(), new Linear(8, 8, o), new RMSNorm(8, o),
  new GELU(), new Tanh(), new Dropout(0.25, { seed: 2 }), new Linear(8, 2, o),
);
const x = init.normal([4, 3], o);
const y = net.forward(x);
const loss = y.mul(y).sum().add(y.softmax().max()).sub(y.exp().mean());
loss.backward();
const emb = new Embedding(5, 2, o);
const idx = init.zeros([3], { device: "cpu" }).cast("i32");
const e = emb.forward(idx).matmul(init.ones([2, 2], o)).transpose();
console.log(JSON.stringify({
  y: y.shape, loss: loss.size, grads: net.parameters().every((p) => p.grad !== null),
  e: Array.from(await e.toArray()).length, am: y.argmax(1).dtype, cs: y.cumsum(0).shape,
  g: x.gather(idx, 0).shape, lse: y.logSumExp().shape,
}));
`);
    expect(r.ok, r.err).toBe(true);
    expect(JSON.parse(r.out)).toEqual({
      y: [4, 2],
      loss: 1,
      grads: true,
      e: 6,
      am: "i32",
      cs: [4, 2],
      g: [3, 3],
      lse: [4],
    });
  });

  it("a method whose op module was not loaded throws naming the method and the module", async () => {
    const creation = new URL("ops/core/creation.ts", ROOT).href;
    const r = await runScript(`
import { ones } from "${creation}";
const x = ones([2, 2], { device: "cpu" });
for (const call of [() => x.add(1), () => x.matmul(x), () => x.softmax()]) {
  try {
    call();
    console.log("no error");
  } catch (e) {
    console.log((e as Error).message);
  }
}
`);
    expect(r.ok, r.err).toBe(true);
    const lines = r.out.trim().split("\n");
    expect(lines).toHaveLength(3);
    expect(lines[0]).toMatch(/^Tensor\.add: .*not registered.*ops\/core\/elementwise\.ts/);
    expect(lines[1]).toMatch(/^Tensor\.matmul: .*not registered.*ops\/core\/matmul\.ts/);
    expect(lines[2]).toMatch(/^Tensor\.softmax: .*not registered.*ops\/core\/rowwise\.ts/);
  });

  it("runtime/ imports nothing from ops/, and models/ import no module for its side effect", async () => {
    const offenders: string[] = [];
    for (
      const [dir, bad] of [["runtime", /from "\.\.\/ops\/|import\("\.\.\/ops\//], [
        "models",
        /^import "/m,
      ]] as const
    ) {
      for await (const f of Deno.readDir(new URL(`${dir}/`, ROOT))) {
        if (!f.name.endsWith(".ts")) continue;
        const text = await Deno.readTextFile(new URL(`${dir}/${f.name}`, ROOT));
        if (bad.test(text)) offenders.push(`${dir}/${f.name}`);
      }
    }
    expect(offenders).toEqual([]);
  });
});

// ---------------------------------------------------------------------------------------------------------
// an op that throws leaves nothing allocated

const DEVICES: DeviceName[] = ["cpu", "webgpu"];

/** The ledger figures an op that throws must leave as they were, on both devices. */
function ledger() {
  const l = (d: DeviceName) => ({ bytesInUse: memory(d).bytesInUse, liveBuffers: memory(d).liveBuffers });
  return { cpu: l("cpu"), webgpu: l("webgpu") };
}

/** Creates inputs, expects `op` to throw `error`, disposes the inputs: the ledger must be as before. */
function expectNothingKept(
  make: () => Tensor[],
  op: (...ts: Tensor[]) => unknown,
  error: RegExp,
  device: DeviceName,
): void {
  requireDevice(device);
  const before = ledger();
  const inputs = make();
  try {
    expect(() => op(...inputs)).toThrow(error);
  } finally {
    inputs.forEach((t) => t.dispose());
  }
  expect(ledger()).toEqual(before);
}

// 2^40 elements: past webgpu's maxStorageBufferBindingSize and past what the cpu can allocate
const N = 2 ** 20;

describe.each(DEVICES)("an op that throws leaves nothing allocated (%s)", (device) => {
  const binaries = { add, sub, mul, div, maximum };
  it.each(Object.keys(binaries))("a broadcast %s over the size limit", (name) => {
    const op = binaries[name as keyof typeof binaries];
    expectNothingKept(
      () => [full([1, N], 1, { device }), full([N, 1], 2, { device })],
      (a, b) => op(a, b),
      new RegExp(`cannot allocate ${name} output \\[${N}, ${N}\\]`),
      device,
    );
  });

  it("a broadcast where over the size limit", () => {
    expectNothingKept(
      () => [
        full([N, 1], 1, { device, dtype: "u32" }),
        full([1, N], 1, { device }),
        full([N, 1], 2, { device }),
      ],
      (c, a, b) => where(c, a, b),
      /cannot allocate where output/,
      device,
    );
  });

  it("a sum over non-adjacent axes of a broadcast view too large to copy", () => {
    expectNothingKept(
      () => [full([1, 4, 1], 1, { device })],
      (x) => {
        const v = x.expand([N, 4, N]);
        try {
          return sum(v, [0, 2]);
        } finally {
          v.dispose();
        }
      },
      /cannot allocate contiguous output/,
      device,
    );
  });

  it("a logSumExp of a broadcast view too large to copy (its output fits)", () => {
    expectNothingKept(
      () => [full([1, 1], 1, { device })],
      (x) => {
        const v = x.expand([N, device === "cpu" ? N : 64]);
        try {
          return logSumExp(v);
        } finally {
          v.dispose();
        }
      },
      /cannot allocate contiguous output/,
      device,
    );
  });

  it("a gather from a broadcast table too large to copy (its output fits)", () => {
    expectNothingKept(
      () => [full([1, 1], 1, { device }), full([1], 0, { device, dtype: "i32" })],
      (x, idx) => {
        const v = x.expand([N, N]);
        try {
          return gather(v, idx);
        } finally {
          v.dispose();
        }
      },
      /cannot allocate contiguous output/,
      device,
    );
  });

  it("a scatterAdd from a broadcast source too large to copy (its output fits)", () => {
    expectNothingKept(
      () => [full([1, 1], 1, { device }), full([N], 0, { device, dtype: "i32" })],
      (x, idx) => {
        const v = x.expand([N, N]);
        try {
          return scatterAdd(v, idx, 1);
        } finally {
          v.dispose();
        }
      },
      /cannot allocate contiguous output/,
      device,
    );
  });

  it("full with a value its integer dtype cannot hold", () => {
    expectNothingKept(
      () => [],
      () => full([1024], 1.5, { device, dtype: "i32" }),
      /1\.5 is not a valid i32/,
      device,
    );
  });
});

// ---------------------------------------------------------------------------------------------------------
// shader diagnostics: the index prints as its dtype reads, and what the failing batch computed throws

/** The error `p` rejects with (fails the test if it resolves). */
async function rejection(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (e) {
    return e as Error;
  }
  throw new Error("expected a rejection, got a value");
}

describe("an out-of-range index", () => {
  it("on cpu, throws at once with the index as its dtype reads it", () => {
    const table = tensor([[1, 2], [3, 4], [5, 6]], { device: "cpu" });
    const big = tensor(new Uint32Array([0, 4e9]), { device: "cpu" });
    const neg = tensor(new Int32Array([-5]), { device: "cpu" });
    const rows = table.slice([[0, 2]]);
    try {
      expect(() => gather(table, big)).toThrow(
        "gather: index 4000000000 is out of range for an axis of size 3",
      );
      expect(() => gather(table, neg)).toThrow("gather: index -5 is out of range for an axis of size 3");
      expect(() => scatterAdd(rows, big, 3)).toThrow("scatterAdd: index 4000000000 is out");
    } finally {
      [table, big, neg, rows].forEach((t) => t.dispose());
    }
  });

  it("on webgpu, a u32 gather index 4e9 prints as 4000000000; the failed batch's results throw when read", async () => {
    requireGpu();
    const ts: Tensor[] = [];
    const t = <T extends Tensor>(x: T): T => (ts.push(x), x);
    try {
      // computed and read before the failing batch: stays valid
      const before = t(tensor([10, 20], { device: "webgpu" }));
      expect(Array.from(await before.toArray())).toEqual([10, 20]);
      const table = t(tensor([[1, 2], [3, 4], [5, 6]], { device: "webgpu" }));
      const g = t(gather(table, t(tensor(new Uint32Array([0, 4e9]), { device: "webgpu" }))));
      // a valid i32 gather in the same batch must not change how the u32 index prints
      t(gather(table, t(tensor(new Int32Array([1]), { device: "webgpu" }))));
      const other = t(tensor([7], { device: "webgpu" }));
      // the first readback of any tensor throws, naming the op and the index
      const first = await rejection(other.toArray());
      expect(first).toBeInstanceOf(WebGPUError);
      expect(first.message).toContain("gather: index 4000000000 is out of range for an axis of size 3");
      // computed after the error and not from it (the next batch): reads fine
      const fresh = t(add(t(tensor([1, 2], { device: "webgpu" })), 1));
      expect(Array.from(await fresh.toArray())).toEqual([2, 3]);
      // the gather's own output throws the same error, never zeros
      const own = await rejection(g.toArray());
      expect(own).toBeInstanceOf(WebGPUError);
      expect(own.message).toContain(first.message);
      // computed from that output in a later batch: throws too
      const from = t(add(g, 1));
      expect((await rejection(from.toArray())).message).toContain(first.message);
      // computed after the error from a tensor computed before the failing batch: reads fine
      const fromBefore = t(mul(before, 2));
      expect(Array.from(await fromBefore.toArray())).toEqual([20, 40]);
    } finally {
      ts.forEach((x) => x.dispose());
    }
  });

  it("on webgpu, an i32 gather index -5 prints as -5", async () => {
    requireGpu();
    const table = tensor([[1, 2], [3, 4], [5, 6]], { device: "webgpu" });
    const idx = tensor(new Int32Array([1, -5]), { device: "webgpu" });
    const g = gather(table, idx);
    try {
      const e = await rejection(g.toArray());
      expect(e.message).toContain("gather: index -5 is out of range for an axis of size 3");
    } finally {
      [table, idx, g].forEach((x) => x.dispose());
    }
  });

  it("on webgpu, a u32 scatterAdd index 4e9 prints as 4000000000", async () => {
    requireGpu();
    const src = tensor([[1, 1], [2, 2]], { device: "webgpu" });
    const idx = tensor(new Uint32Array([4e9, 0]), { device: "webgpu" });
    const s = scatterAdd(src, idx, 3);
    try {
      const e = await rejection(s.toArray());
      expect(e).toBeInstanceOf(WebGPUError);
      expect(e.message).toContain("scatterAdd: index 4000000000 is out of range for an axis of size 3");
      // and its own result throws again on a second read
      expect((await rejection(s.toArray())).message).toContain(e.message);
    } finally {
      [src, idx, s].forEach((x) => x.dispose());
    }
  });
});
