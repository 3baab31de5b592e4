// Modules and initialisers: parameter naming, train/eval, each layer against a float64 hand computation,
// gradients against finite differences (gradcheck), initialiser statistics, seeded Dropout.
import { describe, expect, test } from "vitest";
import * as s from "../mod.ts";
import type { Tensor } from "../mod.ts";
import { gpu } from "../runtime/device.ts";
import { assertClose, data, leakCheck, requireDevice, requireGpu, scoped } from "../test/helpers.ts";

leakCheck();

const DEVICES = ["cpu", "webgpu"] as const;
const f64 = (shape: number[], seed: number) =>
  s.tensor(data(shape.reduce((a, b) => a * b, 1), seed, 1), { shape, device: "cpu", dtype: "f64" });

/** Sample mean and standard deviation of a tensor's values. */
async function stats(t: Tensor): Promise<{ mean: number; std: number; min: number; max: number }> {
  const d = await t.toArray();
  let m = 0, min = Infinity, max = -Infinity;
  for (const v of d) {
    m += v;
    min = Math.min(min, v);
    max = Math.max(max, v);
  }
  m /= d.length;
  let v2 = 0;
  for (const v of d) v2 += (v - m) ** 2;
  return { mean: m, std: Math.sqrt(v2 / d.length), min, max };
}

class Block extends s.Module {
  norm = new s.LayerNorm(4);
  proj = new s.Linear(4, 4, { seed: 3 });
  forward(x: Tensor): Tensor {
    return this.proj.forward(this.norm.forward(x));
  }
}

class Net extends s.Module {
  embed = new s.Embedding(10, 4, { seed: 1 });
  blocks = [new Block(), new Block()];
  drop = new s.Dropout(0.1, { seed: 5 });
  scale = s.param(s.init.ones([4]));
  tied = this.embed.weight; // weight tying: listed once, under "embed.weight"
  forward(x: Tensor): Tensor {
    let h = this.embed.forward(x);
    for (const b of this.blocks) h = b.forward(h);
    return this.drop.forward(h).mul(this.scale);
  }
}

describe("Module", () => {
  test("namedParameters: field order, nested modules, arrays, tied weights once", () => {
    const net = new Net();
    expect(net.namedParameters().map(([n, t]) => `${n} ${t.shape.join("x")}`)).toEqual([
      "embed.weight 10x4",
      "blocks.0.norm.weight 4",
      "blocks.0.norm.bias 4",
      "blocks.0.proj.weight 4x4",
      "blocks.0.proj.bias 4",
      "blocks.1.norm.weight 4",
      "blocks.1.norm.bias 4",
      "blocks.1.proj.weight 4x4",
      "blocks.1.proj.bias 4",
      "scale 4",
    ]);
    expect(net.parameters().every((p) => p.requiresGrad)).toBe(true);
    expect(net.numParameters()).toBe(40 + 2 * (4 + 4 + 16 + 4) + 4);
    expect(net.namedChildren().map(([n]) => n)).toEqual(["embed", "blocks.0", "blocks.1", "drop"]);
    net.dispose();
    expect(net.parameters().every((p) => p.disposed)).toBe(true);
  });

  test("buffers: tensor fields without requiresGrad are not parameters but are tensors, and are disposed", () => {
    class WithBuffer extends s.Module {
      lin = new s.Linear(2, 2, { device: "cpu" });
      table = s.init.zeros([5], { device: "cpu" });
      frozen = s.init.ones([2], { device: "cpu" });
      forward(x: Tensor): Tensor {
        return this.lin.forward(x);
      }
    }
    const m = new WithBuffer();
    expect(m.namedParameters().map(([n]) => n)).toEqual(["lin.weight", "lin.bias"]);
    expect(m.namedBuffers().map(([n]) => n)).toEqual(["table", "frozen"]);
    expect(m.namedTensors().map(([n]) => n)).toEqual(["lin.weight", "lin.bias", "table", "frozen"]);
    expect(m.numParameters()).toBe(6);
    m.dispose();
    expect([m.table, m.frozen, m.lin.weight].every((t) => t.disposed)).toBe(true);
  });

  test("train/eval reach every descendant", () => {
    const net = new Net();
    net.eval();
    expect([net, net.blocks[1].proj, net.drop].map((m) => m.training)).toEqual([false, false, false]);
    net.train();
    expect([net, net.blocks[0].norm, net.drop].map((m) => m.training)).toEqual([true, true, true]);
    net.dispose();
  });

  test("a module that contains itself is an error", () => {
    class Loop extends s.Module {
      self: s.Module = this;
      forward(x: Tensor): Tensor {
        return x;
      }
    }
    expect(() => new Loop().namedParameters()).toThrow(/contains itself/);
  });

  test("zeroGrad clears every gradient; parameters outlive tidy", () => {
    const net = new Net();
    s.tidy(() => net.forward(s.tensor([[1, 2, 3]], { dtype: "i32" })).sum().backward());
    expect(net.parameters().every((p) => p.grad !== null && !p.disposed)).toBe(true);
    net.zeroGrad();
    expect(net.parameters().every((p) => p.grad === null)).toBe(true);
    net.dispose();
  });
});

describe("Linear", () => {
  test(
    "forward against a float64 hand computation; bias optional",
    scoped(async () => {
      const l = new s.Linear(3, 2, { device: "cpu", dtype: "f64", seed: 1 });
      const x = f64([4, 3], 2);
      const [xd, w, b] = [await x.toArray(), await l.weight.toArray(), await l.bias!.toArray()];
      const want = new Float64Array(8);
      for (let i = 0; i < 4; i++) {
        for (let j = 0; j < 2; j++) {
          let acc = b[j];
          for (let k = 0; k < 3; k++) acc += xd[i * 3 + k] * w[k * 2 + j];
          want[i * 2 + j] = acc;
        }
      }
      assertClose(await l.forward(x).toArray(), want, { atol: 1e-12, rtol: 1e-12 });
      const nb = new s.Linear(3, 2, { bias: false, device: "cpu" });
      expect(nb.bias).toBeNull();
      expect(nb.namedParameters().map(([n]) => n)).toEqual(["weight"]);
      l.dispose();
      nb.dispose();
    }),
  );

  test(
    "default init is U(-1/sqrt(in), 1/sqrt(in)), seeded, identical on both backends",
    scoped(async () => {
      const a = new s.Linear(64, 32, { seed: 7, device: "cpu" });
      const st = await stats(a.weight);
      expect(st.max).toBeLessThanOrEqual(1 / 8);
      expect(st.min).toBeGreaterThanOrEqual(-1 / 8);
      expect(st.std).toBeCloseTo(1 / 8 / Math.sqrt(3), 2);
      for (const device of DEVICES) {
        requireDevice(device);
        const b = new s.Linear(64, 32, { seed: 7, device });
        expect(await b.weight.toArray()).toEqual(await a.weight.toArray());
        expect(await b.bias!.toArray()).toEqual(await a.bias!.toArray());
        b.dispose();
      }
      a.dispose();
    }),
  );

  for (const device of DEVICES) {
    test(
      `gradcheck of the layer on batched input (${device})`,
      scoped(async () => {
        requireDevice(device);
        const dtype = device === "cpu" ? "f64" : "f32";
        const l = new s.Linear(3, 2, { device, dtype, seed: 4 });
        const inputs = [await f64([2, 2, 3], 5).cast(dtype).to(device), l.weight, l.bias!];
        await s.gradcheck((x, w, b) => {
          const m = new s.Linear(3, 2, { device, dtype });
          const [w0, b0] = [m.weight, m.bias!];
          [m.weight, m.bias] = [w, b];
          const y = m.forward(x);
          w0.dispose();
          b0.dispose();
          return y;
        }, inputs);
        l.dispose();
      }),
    );
  }

  for (const device of DEVICES) {
    test(
      `a 3-D input runs the 2-D product: same values, gradients and dispatches as (B*T, in) (${device})`,
      scoped(async () => {
        requireDevice(device);
        const l = new s.Linear(64, 48, { seed: 6, device });
        const x0 = s.randn([4, 32, 64], { seed: 8, device });
        const cot = s.randn([4, 32, 48], { seed: 9, device });
        /** Output, dW, db and dx of one forward/backward with x of `shape`; the dispatches it recorded. */
        const run = async (shape: number[]) => {
          const x = s.param(x0.reshape(shape).contiguous());
          const d0 = device === "webgpu" ? gpu().counters.dispatches : 0;
          const y = l.forward(x);
          y.mul(cot.reshape(y.shape)).sum().backward();
          const dispatches = device === "webgpu" ? gpu().counters.dispatches - d0 : 0;
          const out = [y, l.weight.grad!, l.bias!.grad!, x.grad!].map((t) => t.toArray());
          const r = { values: await Promise.all(out), dispatches, shape: y.shape };
          l.zeroGrad();
          x.zeroGrad();
          x.dispose();
          return r;
        };
        const flat = await run([128, 64]);
        const misses = device === "webgpu" ? gpu().cacheStats.misses : 0;
        const batched = await run([4, 32, 64]);
        expect(batched.shape).toEqual([4, 32, 48]);
        batched.values.forEach((v, i) => expect(v).toEqual(flat.values[i]));
        if (device === "webgpu") {
          // the same programs: no pipeline compiled for the 3-D call, no batched dW summed over B
          expect(batched.dispatches).toBe(flat.dispatches);
          expect(gpu().cacheStats.misses).toBe(misses);
        }
        // a non-contiguous 3-D input is copied once into rows, with the same result
        const xt = s.param(x0.transpose(0, 1).contiguous()); // (32, 4, 64)
        const yt = l.forward(xt.transpose(0, 1));
        expect(await yt.toArray()).toEqual(flat.values[0]);
        for (const t of [l, x0, cot, xt, yt]) t.dispose();
      }),
    );
  }

  test("bad input throws with the shapes", () => {
    const l = new s.Linear(3, 2, { device: "cpu" });
    expect(() => s.tidy(() => l.forward(s.zeros([4, 5], { device: "cpu" })))).toThrow(
      /Linear: input tensor \[4, 5\] f32 on cpu does not end in inFeatures 3/,
    );
    expect(() => new s.Linear(0, 2)).toThrow(/inFeatures must be a positive integer, got 0/);
    l.dispose();
  });
});

describe("Embedding", () => {
  for (const device of DEVICES) {
    test(
      `rows by index, gradient counts repeated indices (${device})`,
      scoped(async () => {
        requireDevice(device);
        const e = new s.Embedding(5, 3, { seed: 2, device });
        const idx = s.tensor([[4, 0], [4, 2]], { dtype: "i32", device });
        const y = e.forward(idx);
        expect(y.shape).toEqual([2, 2, 3]);
        const w = await e.weight.toArray(), got = await y.toArray();
        [4, 0, 4, 2].forEach((r, i) =>
          expect(Array.from(got.slice(i * 3, i * 3 + 3))).toEqual(Array.from(w.slice(r * 3, r * 3 + 3)))
        );
        y.sum().backward();
        expect(Array.from(await e.weight.grad!.toArray())).toEqual([
          1,
          1,
          1,
          0,
          0,
          0,
          1,
          1,
          1,
          0,
          0,
          0,
          2,
          2,
          2,
        ]);
        e.dispose();
      }),
    );
  }

  test(
    "init N(0, 1)",
    scoped(async () => {
      const e = new s.Embedding(100, 100, { seed: 3, device: "cpu" });
      const st = await stats(e.weight);
      expect(Math.abs(st.mean)).toBeLessThan(0.03);
      expect(st.std).toBeCloseTo(1, 1);
      e.dispose();
    }),
  );
});

describe("LayerNorm and RMSNorm", () => {
  test(
    "forward against a float64 hand computation",
    scoped(async () => {
      const x = f64([3, 5], 9);
      const ln = new s.LayerNorm(5, { device: "cpu", dtype: "f64" });
      const rn = new s.RMSNorm(5, { device: "cpu", dtype: "f64", eps: 1e-6 });
      const xd = await x.toArray();
      const wantLn = new Float64Array(15), wantRn = new Float64Array(15);
      for (let i = 0; i < 3; i++) {
        const row = Array.from(xd.slice(i * 5, i * 5 + 5));
        const mu = row.reduce((a, b) => a + b) / 5;
        const v = row.reduce((a, b) => a + (b - mu) ** 2, 0) / 5;
        const ms = row.reduce((a, b) => a + b * b, 0) / 5;
        row.forEach((r, j) => {
          wantLn[i * 5 + j] = (r - mu) / Math.sqrt(v + 1e-5);
          wantRn[i * 5 + j] = r / Math.sqrt(ms + 1e-6);
        });
      }
      assertClose(await ln.forward(x).toArray(), wantLn, { atol: 1e-12, rtol: 1e-10 });
      assertClose(await rn.forward(x).toArray(), wantRn, { atol: 1e-12, rtol: 1e-10 });
      expect(new s.LayerNorm(5, { affine: false }).parameters()).toEqual([]);
      ln.dispose();
      rn.dispose();
    }),
  );

  for (const device of DEVICES) {
    test(
      `gradcheck through the modules (${device})`,
      scoped(async () => {
        requireDevice(device);
        const dtype = device === "cpu" ? "f64" : "f32";
        const x = await f64([2, 4], 11).cast(dtype).to(device);
        const w = await f64([4], 12).add(1).cast(dtype).to(device),
          b = await f64([4], 13).cast(dtype).to(device);
        await s.gradcheck((x, w, b) => {
          const ln = new s.LayerNorm(4, { device, dtype });
          ln.dispose();
          [ln.weight, ln.bias] = [w, b];
          return ln.forward(x);
        }, [x, w, b]);
        await s.gradcheck((x, w) => {
          const rn = new s.RMSNorm(4, { device, dtype });
          rn.dispose();
          rn.weight = w;
          return rn.forward(x);
        }, [x, w]);
      }),
    );
  }
});

describe("Dropout", () => {
  test(
    "train mode: zeros about p of the elements, scales the rest by 1/(1-p)",
    scoped(async () => {
      const d = new s.Dropout(0.25, { seed: 1 });
      const y = await d.forward(s.ones([4096], { device: "cpu" })).toArray();
      const zeros = y.filter((v) => v === 0).length;
      expect(zeros / 4096).toBeGreaterThan(0.22);
      expect(zeros / 4096).toBeLessThan(0.28);
      expect(y.every((v) => v === 0 || Math.abs(v - 4 / 3) < 1e-6)).toBe(true);
    }),
  );

  test(
    "seeded: the same seed gives the same sequence of masks; successive calls differ",
    scoped(async () => {
      const a = new s.Dropout(0.5, { seed: 9 }), b = new s.Dropout(0.5, { seed: 9 });
      const x = s.ones([256], { device: "cpu" });
      const a1 = await a.forward(x).toArray(), a2 = await a.forward(x).toArray();
      const b1 = await b.forward(x).toArray(), b2 = await b.forward(x).toArray();
      expect(a1).toEqual(b1);
      expect(a2).toEqual(b2);
      expect(a1).not.toEqual(a2);
      const c = new s.Dropout(0.5, { seed: 10 });
      expect(await c.forward(x).toArray()).not.toEqual(a1);
    }),
  );

  test(
    "the same masks on cpu and webgpu (rand is bit-identical)",
    scoped(async () => {
      requireGpu();
      const a = new s.Dropout(0.3, { seed: 4 }), b = new s.Dropout(0.3, { seed: 4 });
      const ya = await a.forward(s.ones([1000], { device: "cpu" })).toArray();
      const yb = await b.forward(s.ones([1000], { device: "webgpu" })).toArray();
      expect(yb).toEqual(ya);
    }),
  );

  test(
    "global streams without a seed: manualSeed makes them repeatable",
    scoped(async () => {
      const x = s.ones([128], { device: "cpu" });
      s.manualSeed(77);
      const a = await new s.Dropout(0.5).forward(x).toArray();
      s.manualSeed(77);
      const b = await new s.Dropout(0.5).forward(x).toArray();
      expect(a).toEqual(b);
    }),
  );

  test(
    "eval mode and p = 0 are the identity; gradient is mask / (1 - p)",
    scoped(async () => {
      const x = s.param(s.ones([64], { device: "cpu" }));
      const d = new s.Dropout(0.5, { seed: 2 });
      expect(d.eval().forward(x)).toBe(x);
      expect(new s.Dropout(0).forward(x)).toBe(x);
      d.train();
      const y = d.forward(x);
      y.sum().backward();
      expect(await x.grad!.toArray()).toEqual(await y.toArray()); // x is ones: y = mask * 2 = dy/dx
      x.zeroGrad();
      x.dispose();
      expect(() => new s.Dropout(1)).toThrow(/p must be in \[0, 1\), got 1/);
    }),
  );
});

describe("Sequential", () => {
  for (const device of DEVICES) {
    test(
      `chains layers, frees intermediates, backward still works (${device})`,
      scoped(() => {
        requireDevice(device);
        const net = new s.Sequential(
          new s.Linear(3, 8, { seed: 1, device }),
          new s.Tanh(),
          new s.Linear(8, 8, { seed: 2, device }),
          new s.GELU(),
          new s.ReLU(),
          new s.Linear(8, 1, { seed: 3, device }),
        );
        const before = s.memory(device).bytesInUse;
        const x = s.randn([5, 3], { seed: 4, device });
        const y = net.forward(x);
        expect(y.shape).toEqual([5, 1]);
        const loss = y.sum();
        loss.backward();
        expect(net.parameters().map((p) => p.grad?.shape)).toEqual(net.parameters().map((p) => p.shape));
        for (const t of [x, y, loss]) t.dispose();
        net.zeroGrad();
        expect(s.memory(device).bytesInUse).toBe(before); // nothing left behind by the chain
        net.dispose();
      }),
    );
  }

  test("a non-module layer is an error", () => {
    expect(() => new s.Sequential(new s.ReLU(), 3 as unknown as s.Module)).toThrow(/layer 1 is not a Module/);
  });
});

describe("init", () => {
  test(
    "xavier and kaiming: bounds and standard deviations from the (in, out) fans",
    scoped(async () => {
      const xu = await stats(s.init.xavierUniform([200, 100], { seed: 1, device: "cpu" }));
      const b = Math.sqrt(6 / 300);
      expect(xu.max).toBeLessThanOrEqual(b);
      expect(xu.min).toBeGreaterThanOrEqual(-b);
      expect(xu.std).toBeCloseTo(b / Math.sqrt(3), 2);
      const xn = await stats(s.init.xavierNormal([200, 100], { seed: 2, device: "cpu", gain: 2 }));
      expect(xn.std / (2 * Math.sqrt(2 / 300))).toBeCloseTo(1, 1);
      const ku = await stats(s.init.kaimingUniform([200, 100], { seed: 3, device: "cpu" }));
      expect(ku.max).toBeLessThanOrEqual(Math.sqrt(6 / 200));
      expect(ku.std / Math.sqrt(2 / 200)).toBeCloseTo(1, 1);
      const kn = await stats(s.init.kaimingNormal([200, 100], { seed: 4, device: "cpu", mode: "fanOut" }));
      expect(kn.std / Math.sqrt(2 / 100)).toBeCloseTo(1, 1);
      const kt = await stats(
        s.init.kaimingNormal([200, 100], { seed: 5, device: "cpu", nonlinearity: "tanh" }),
      );
      expect(kt.std / ((5 / 3) / Math.sqrt(200))).toBeCloseTo(1, 1);
      const nm = await stats(s.init.normal([100, 100], { seed: 6, device: "cpu", mean: 3, std: 0.5 }));
      expect(nm.mean).toBeCloseTo(3, 1);
      expect(nm.std).toBeCloseTo(0.5, 1);
      const un = await stats(s.init.uniform([100, 100], { seed: 7, device: "cpu", low: 2, high: 4 }));
      expect(un.min).toBeGreaterThanOrEqual(2);
      expect(un.max).toBeLessThan(4);
      expect(Array.from(await s.init.zeros([3], { device: "cpu" }).toArray())).toEqual([0, 0, 0]);
      expect(Array.from(await s.init.ones([2], { device: "cpu", dtype: "f64" }).toArray())).toEqual([1, 1]);
    }),
  );

  test(
    "seeded initialisers repeat; bad arguments throw",
    scoped(async () => {
      const a = await s.init.kaimingUniform([8, 8], { seed: 5, device: "cpu" }).toArray();
      expect(await s.init.kaimingUniform([8, 8], { seed: 5, device: "cpu" }).toArray()).toEqual(a);
      expect(() => s.init.xavierUniform([])).toThrow(/cannot compute fans of a scalar shape/);
      expect(() => s.init.kaimingNormal([4, 4], { nonlinearity: "swish" as "relu" })).toThrow(
        /unknown nonlinearity "swish"/,
      );
    }),
  );
});
