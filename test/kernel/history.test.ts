// The kernel's input history lives in a file of its cell directory (kernel/history.ts), so a long session's
// memory does not grow with it; jupyter_kernel_test's test_history (protocol.test.ts) checks the replies.
import { describe, expect, test } from "vitest";
import { HistoryLog } from "../../kernel/history.ts";

describe("HistoryLog", () => {
  test("200 entries: the file holds all, memory the last 64; tail and all read the right ones", () => {
    const dir = Deno.makeTempDirSync({ prefix: "seqlab-history-test-" });
    try {
      const h = new HistoryLog(dir);
      const entry = (i: number) => ({ line: i, input: `x${i} = ${i}`, output: i % 3 ? String(i) : null });
      for (let i = 1; i <= 200; i++) h.add(entry(i));
      expect(h.size).toBe(200);
      expect(h.tail(3)).toEqual([entry(198), entry(199), entry(200)]);
      expect(h.tail(100).map((e) => e.line)).toEqual([...Array(100).keys()].map((i) => i + 101));
      expect(h.all()).toEqual([...Array(200).keys()].map((i) => entry(i + 1)));
      expect(h.tail(0)).toEqual([]);
      const lines = Deno.readTextFileSync(`${dir}/history.jsonl`).trim().split("\n");
      expect(lines).toHaveLength(200);
      // the in-memory part is bounded
      expect((h as unknown as { recent: unknown[] }).recent).toHaveLength(64);
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  });

  test("an unwritable file keeps the cell running: entries stay among the recent ones", () => {
    const h = new HistoryLog("/nonexistent-seqlab-dir/sub");
    h.add({ line: 1, input: "1 + 1", output: "2" });
    expect(h.tail(5)).toEqual([{ line: 1, input: "1 + 1", output: "2" }]);
    expect(h.all()).toEqual([{ line: 1, input: "1 + 1", output: "2" }]);
  });
});
