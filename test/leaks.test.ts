// Every op, run outside any tidy scope: after disposing its inputs and output, the ledger is back where it
// started on both devices. This is what catches an op that forgets one of its own temporaries.
import { expect, test } from "vitest";
import * as s from "../mod.ts";
import type { Tensor } from "../mod.ts";

const OPS: [string, (x: Tensor, i: Tensor) => Tensor][] = [
  ["add broadcast", (x) => s.add(x, x.slice([0]))],
  ["add scalar", (x) => s.add(x, 2)],
  ["where", (x) => s.where(x, x, 0)],
  ["exp of view", (x) => x.transpose().exp()],
  ["cast", (x) => x.cast("i32")],
  ["sum all", (x) => x.sum()],
  ["sum axes", (x) => x.permute([1, 0]).sum([0, 1], true)],
  ["mean split", (x) => x.reshape([-1]).expand([3, 2048]).mean(1)],
  ["argmax", (x) => x.argmax()],
  ["cumsum", (x) => x.cumsum(0)],
  ["matmul", (x) => x.matmul(x.transpose())],
  ["matmul broadcast", (x) => x.reshape([1, 32, 64]).matmul(x.transpose().expand([2, 64, 32]))],
  ["softmax", (x) => x.softmax(0)],
  ["logSumExp", (x) => x.logSumExp(1, true)],
  ["layerNorm", (x) => x.layerNorm(x.slice([0]), x.slice([1]))],
  ["rmsNorm", (x) => x.transpose().rmsNorm()],
  ["concat (promotes i32)", (x, i) => s.concat([x.slice([[0, 1], [0, 3]]), i.unsqueeze(0)], 0)],
  ["stack", (x) => s.stack([x, x], 1)],
  ["gather", (x, i) => s.gather(x, i, 1)],
  ["reshape copy", (x) => x.transpose().reshape([-1])],
];

test("no op leaks its temporaries (both devices)", async () => {
  for (const device of ["cpu", "webgpu"] as const) {
    const x = s.randn([32, 64], { seed: 1, device });
    const i = s.tensor([3, 1, 63], { dtype: "i32", device });
    await x.toArray();
    for (const [name, f] of OPS) {
      const before = s.memory(device).bytesInUse;
      const y = f(x, i);
      await y.toArray();
      y.dispose();
      expect(s.memory(device).bytesInUse, `${name} on ${device}`).toBe(before);
    }
    x.dispose();
    i.dispose();
  }
});
