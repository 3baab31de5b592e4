// Every ssm op (and backward), run outside any tidy scope: after disposing its inputs, outputs and
// gradients, the ledger is back where it started on both devices. This catches an op that forgets one of
// its own temporaries (carry buffers, packed params, backward scratch), which scoped tests would hide.
import { expect, test } from "vitest";
import * as s from "../../mod.ts";
import type { Tensor } from "../../mod.ts";

type Case = [string, (d: s.DeviceName) => Tensor[], (...x: Tensor[]) => Tensor | Tensor[]];

const mk = (d: s.DeviceName) => {
  const o = { device: d };
  return [
    s.randn([2, 4, 20], { seed: 1, ...o }),
    s.rand([2, 4, 20], { seed: 2, low: 0.01, high: 0.2, ...o }),
    s.rand([4, 3], { seed: 3, low: -1, high: -0.1, ...o }),
    s.randn([2, 3, 20], { seed: 4, ...o }),
    s.randn([2, 3, 20], { seed: 5, ...o }),
    s.randn([4], { seed: 6, ...o }),
    s.randn([2, 4, 20], { seed: 7, ...o }),
  ];
};

const CASES: Case[] = [
  [
    "selectiveScan v1, every option",
    mk,
    (u, dl, A, B, C, D, z) =>
      s.selectiveScan(u, dl, A, B, C, {
        D,
        z,
        deltaBias: D,
        deltaSoftplus: true,
        returnLastState: true,
        version: "v1",
      }),
  ],
  [
    "selectiveScan v2 chunked",
    mk,
    (u, dl, A, B, C) =>
      s.selectiveScan(u, dl, A, B, C, { version: "v2", chunkSize: 8, returnLastState: true }),
  ],
  [
    "selectiveScan v2 Hillis-Steele",
    mk,
    (u, dl, A, B, C) =>
      s.selectiveScan(u, dl, A, B, C, { version: "v2", chunkSize: 4, carry: "hillis-steele" }),
  ],
  ["selectiveScanStep", mk, (u, dl, A, B, C) => {
    const st = s.zeros([2, 4, 3], { device: u.device });
    const views = [u, dl, B, C].map((t) => t.slice([null, null, 0])); // views hold their storage: freed below
    const r = s.selectiveScanStep(st, views[0], views[1], A, views[2], views[3]);
    st.dispose();
    views.forEach((v) => v.dispose());
    return [r.y, r.state];
  }],
  [
    "causalConv1d with state, SiLU, final state",
    (d) => [
      s.randn([2, 3, 9], { seed: 1, device: d }),
      s.randn([3, 4], { seed: 2, device: d }),
      s.randn([3], { seed: 3, device: d }),
      s.randn([2, 3, 3], { seed: 4, device: d }),
    ],
    (x, w, b, st) =>
      s.causalConv1d(x, w, { bias: b, initialState: st, activation: "silu", returnFinalState: true }),
  ],
  [
    "causalConv1dStep",
    (
      d,
    ) => [
      s.randn([2, 3, 3], { seed: 1, device: d }),
      s.randn([2, 3], { seed: 2, device: d }),
      s.randn([3, 4], { seed: 3, device: d }),
    ],
    (st, x, w) => {
      const r = s.causalConv1dStep(st, x, w, { activation: "silu" });
      return [r.y, r.state];
    },
  ],
  [
    "ssmConvolution",
    (d) => [s.randn([1, 2, 12], { seed: 1, device: d }), s.randn([2, 12], { seed: 2, device: d })],
    (u, K) => s.ssmConvolution(u, K),
  ],
  [
    "ssmRecurrence",
    (d) => [s.randn([1, 2, 12], { seed: 1, device: d })],
    (u) => s.ssmRecurrence(u, s.s4dInit("lin", 2, 4, { seed: 1 }), { conj: true }),
  ],
  [
    "discretize",
    (
      d,
    ) => [
      s.rand([4, 3], { seed: 1, low: -1, high: 0, device: d }),
      s.randn([4, 3], { seed: 2, device: d }),
      s.rand([4, 1], { seed: 3, device: d }),
    ],
    (A, B, dt) => {
      const r = s.discretize(A, B, dt, "zoh");
      return [r.Abar, r.Bbar];
    },
  ],
  [
    "crossScan and crossMerge",
    (d) => [s.randn([1, 2, 3, 4], { seed: 1, device: d })],
    (x) => {
      const y = s.crossScan(x), m = s.crossMerge(y, 3, 4);
      y.dispose(); // the graph keeps what the backward needs
      return m;
    },
  ],
  [
    "bidirectional",
    (d) => [s.randn([1, 2, 6], { seed: 1, device: d })],
    (x) => s.bidirectional(x, (v) => v.cumsum(-1), (v) => v.mul(2)),
  ],
];

test("no ssm op leaks its temporaries, forward or backward (both devices)", async () => {
  for (const device of ["cpu", "webgpu"] as const) {
    for (const [name, make, f] of CASES) {
      for (const backward of [false, true]) {
        const before = s.memory(device).bytesInUse;
        const xs = make(device);
        if (backward) xs.forEach((t) => (t.requiresGrad = true));
        const out = f(...xs);
        const outs = Array.isArray(out) ? out : [out];
        for (const o of outs) await o.toArray();
        if (backward) {
          const losses = outs.map((o) => o.sum());
          let loss = losses[0];
          for (const l of losses.slice(1)) {
            const next = loss.add(l);
            if (loss !== losses[0]) loss.dispose();
            loss = next;
          }
          if (loss.requiresGrad) loss.backward(); // ssmRecurrence is not differentiable
          for (const t of xs) if (t.grad) await t.grad.toArray();
          losses.forEach((l) => l.dispose());
          loss.dispose();
        }
        outs.forEach((o) => o.dispose());
        xs.forEach((t) => {
          t.zeroGrad();
          t.dispose();
        });
        expect(s.memory(device).bytesInUse, `${name}${backward ? " (backward)" : ""} on ${device}`).toBe(
          before,
        );
      }
    }
  }
});
