import { expect, test } from "vitest";
import { REPLAY_HISTORY, Signer } from "./wire.ts";

const enc = new TextEncoder();
const frames = (
  i: number,
) => [enc.encode(`{"msg_id":"${i}"}`), enc.encode("{}"), enc.encode("{}"), enc.encode("{}")];

test("a replayed message is refused while it is among the last 65,536 verified ones (ipykernel's guarantee)", () => {
  const s = new Signer("key");
  const sig = (i: number) => s.sign(frames(i));
  expect(s.verify(sig(0), frames(0))).toBeNull();
  expect(s.verify(sig(0), frames(0))).toBe("replayed signature");
  // 4,100 later messages (the old history of 4,096 forgot the first after that many)
  for (let i = 1; i <= 4100; i++) expect(s.verify(sig(i), frames(i))).toBeNull();
  expect(s.verify(sig(0), frames(0))).toBe("replayed signature");
  // up to the history's size, every earlier message is still refused
  for (let i = 4101; i < REPLAY_HISTORY; i++) s.verify(sig(i), frames(i));
  expect(s.verify(sig(0), frames(0))).toBe("replayed signature");
  expect(s.verify(sig(1), frames(1))).toBe("replayed signature");
  // one more message pushes the oldest out of the ring: it is no longer remembered
  expect(s.verify(sig(REPLAY_HISTORY), frames(REPLAY_HISTORY))).toBeNull();
  expect(s.verify(sig(0), frames(0))).toBeNull();
  expect(s.verify(sig(2), frames(2))).toBe("replayed signature");
  expect(s.verify("0".repeat(64), frames(5))).toBe("bad signature");
});
