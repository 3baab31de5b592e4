/**
 * A streaming generation in the kernel (issue 12): `LLMEngine.generate` feeding one display that is updated
 * in place, as a real client (jupyter_client, through driver.py) sees it.
 */
import { expect, test } from "vitest";
import { drive, type ExecResult, resultOf } from "./harness.ts";

test("engine.generate updates one display in place, one update per generated token", async () => {
  const cell = [
    "const lm = new TransformerLM({ vocabSize: 11, dModel: 16, nLayer: 1, nHead: 2, seed: 1 });",
    "const engine = new LLMEngine(lm, { numBlocks: 8, blockSize: 8 });",
    "const h = await display(md('generating...'));",
    "let n = 0;",
    "for await (const o of engine.generate([1, 2, 3], { maxTokens: 5, temperature: 0 })) {",
    "  await h.update(md(`tokens: ${o.outputs[0].tokens.join(' ')}${o.finished ? ' (done)' : ''}`));",
    "  n++;",
    "}",
    "engine.dispose();",
    "lm.dispose();",
    "n",
  ].join("\n");
  const [r] = (await drive([{ execute: cell }], 120_000)) as ExecResult[];
  expect(r.reply.status, JSON.stringify(r.reply)).toBe("ok");
  expect(r.order_ok).toBe(true);
  expect(r.outputs.map((o) => o.type)).toEqual([
    "display_data",
    ...Array(5).fill("update_display_data"),
    "execute_result",
  ]);
  const ids = r.outputs.slice(0, 6).map((o) => (o.content.transient as { display_id?: string })?.display_id);
  expect(new Set(ids).size).toBe(1);
  expect(ids[0]).toBeTruthy();
  const last = String(r.outputs[5].content.data?.["text/markdown"]);
  expect(last).toMatch(/^tokens: (\d+ ){4}\d+ \(done\)$/);
  expect(resultOf(r)).toBe("5");
});
