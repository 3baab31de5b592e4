/**
 * The ZMTP 3.0 transport (kernel/zmtp.ts) against hand-written peers over loopback TCP: greeting and
 * READY, both subscription forms (3.0 messages, 3.1 SUBSCRIBE/CANCEL commands), PING/PONG, short and
 * long frames, byte-at-a-time delivery, identity handover; then against pyzmq (libzmq) as the peer.
 */
import { afterEach, describe, expect, test } from "vitest";
import {
  commandBody,
  concat,
  decodeProperties,
  EchoRepSocket,
  encodeProperties,
  frameHeader,
  greeting,
  PubSocket,
  RouterSocket,
  setLogger,
} from "../../kernel/zmtp.ts";
import { PYTHON, run } from "./harness.ts";

setLogger(() => {});
const enc = new TextEncoder();
const dec = new TextDecoder();
const open: { close(): void }[] = [];
afterEach(() => {
  for (const s of open.splice(0)) s.close();
});

/** A minimal ZMTP client: enough to play DEALER/SUB/REQ by hand. */
class RawPeer {
  private buf: Uint8Array = new Uint8Array(0);
  constructor(readonly conn: Deno.Conn) {}
  static async connect(port: number, type: string, identity = ""): Promise<RawPeer> {
    const p = new RawPeer(await Deno.connect({ hostname: "127.0.0.1", port }));
    await p.write(greeting(false));
    const g = await p.read(64);
    expect(g[0]).toBe(0xff);
    expect(g[10]).toBe(3);
    await p.command("READY", encodeProperties({ "Socket-Type": type, Identity: identity }));
    const ready = await p.frame();
    expect(ready.command).toBe(true);
    expect(dec.decode(ready.body.subarray(1, 6))).toBe("READY");
    const props = decodeProperties(ready.body.subarray(6));
    expect(props.has("socket-type")).toBe(true);
    return p;
  }
  async write(b: Uint8Array, chunk = 0): Promise<void> {
    if (!chunk) {
      let o = 0;
      while (o < b.length) o += await this.conn.write(b.subarray(o));
      return;
    }
    for (let i = 0; i < b.length; i += chunk) await this.write(b.subarray(i, i + chunk));
  }
  async read(n: number): Promise<Uint8Array> {
    const tmp = new Uint8Array(65536);
    const deadline = Date.now() + 5000;
    while (this.buf.length < n) {
      if (Date.now() > deadline) throw new Error("read timed out");
      const got = await this.conn.read(tmp);
      if (got === null) throw new Error("closed");
      this.buf = concat([this.buf, tmp.subarray(0, got)]);
    }
    const out = this.buf.slice(0, n);
    this.buf = this.buf.slice(n);
    return out;
  }
  async frame(): Promise<{ more: boolean; command: boolean; body: Uint8Array }> {
    const [flags] = await this.read(1);
    let size: number;
    if (flags & 2) size = Number(new DataView((await this.read(8)).buffer).getBigUint64(0));
    else size = (await this.read(1))[0];
    return { more: (flags & 1) !== 0, command: (flags & 4) !== 0, body: await this.read(size) };
  }
  async message(): Promise<string[]> {
    const parts: string[] = [];
    for (;;) {
      const f = await this.frame();
      if (f.command) continue;
      parts.push(dec.decode(f.body));
      if (!f.more) return parts;
    }
  }
  send(parts: (string | Uint8Array)[], chunk = 0): Promise<void> {
    const bytes = parts.map((p) => (typeof p === "string" ? enc.encode(p) : p));
    return this.write(
      concat(bytes.flatMap((b, i) => [frameHeader(b.length, i < bytes.length - 1 ? 1 : 0), b])),
      chunk,
    );
  }
  command(name: string, data?: Uint8Array): Promise<void> {
    const body = commandBody(name, data);
    return this.write(concat([frameHeader(body.length, 4), body]));
  }
  close() {
    try {
      this.conn.close();
    } catch { /* closed */ }
  }
}

const until = async (f: () => boolean, ms = 3000) => {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) throw new Error("condition not reached");
    await new Promise((r) => setTimeout(r, 5));
  }
};

describe("zmtp with hand-written peers", () => {
  test("ROUTER prefixes identity, routes replies, handles long frames and byte-at-a-time input", async () => {
    const router = new RouterSocket("t");
    open.push(router);
    const port = router.bind("127.0.0.1", 0);
    router.onMessage = (f) => router.send(f);
    const p = await RawPeer.connect(port, "DEALER", "peer-1");
    open.push(p);
    await p.send(["a", "b"]);
    expect(await p.message()).toEqual(["a", "b"]);
    const long = "x".repeat(70_000);
    await p.send(["long", long], 7); // 7-byte writes: frames split anywhere
    expect(await p.message()).toEqual(["long", long]);
    // A reconnect with the same identity takes over; replies go to the new connection.
    const p2 = await RawPeer.connect(port, "DEALER", "peer-1");
    open.push(p2);
    await p2.send(["again"]);
    expect(await p2.message()).toEqual(["again"]);
    expect(router.peerCount).toBe(1);
  });

  test("PUB honours ZMTP 3.0 subscription messages and 3.1 SUBSCRIBE/CANCEL commands", async () => {
    const pub = new PubSocket("t");
    open.push(pub);
    const port = pub.bind("127.0.0.1", 0);
    const s30 = await RawPeer.connect(port, "SUB");
    const s31 = await RawPeer.connect(port, "SUB");
    open.push(s30, s31);
    await s30.send([concat([Uint8Array.of(1), enc.encode("kernel.a")])]);
    await s31.command("SUBSCRIBE", enc.encode("kernel.b"));
    await until(() => pub.subscriberCount === 2);
    await pub.send([enc.encode("kernel.b.x"), enc.encode("to b")]);
    await pub.send([enc.encode("kernel.a.x"), enc.encode("to a")]);
    expect(await s30.message()).toEqual(["kernel.a.x", "to a"]);
    expect(await s31.message()).toEqual(["kernel.b.x", "to b"]);
    await s31.command("CANCEL", enc.encode("kernel.b"));
    await until(() => pub.subscriberCount === 1);
  });

  test("PING gets PONG; a wrong socket type and a non-ZMTP client are refused", async () => {
    const rep = new EchoRepSocket("t");
    open.push(rep);
    const port = rep.bind("127.0.0.1", 0);
    const p = await RawPeer.connect(port, "REQ");
    open.push(p);
    await p.command("PING", concat([Uint8Array.of(0, 10), enc.encode("ctx")]));
    const pong = await p.frame();
    expect(pong.command).toBe(true);
    expect(dec.decode(pong.body)).toBe("\x04PONGctx");
    await p.send(["", "ping"]);
    expect(await p.message()).toEqual(["", "ping"]);
    // A PUB may not talk to a REP: READY is answered with an ERROR command, then the connection closes.
    const bad = await RawPeer.connect(port, "PUB");
    open.push(bad);
    const err = await bad.frame();
    expect(err.command).toBe(true);
    expect(dec.decode(err.body)).toBe("\x05ERROR\x13invalid socket type");
    await expect(bad.frame()).rejects.toThrow();
    const junk = await Deno.connect({ hostname: "127.0.0.1", port });
    await junk.write(enc.encode("GET / HTTP/1.1\r\n\r\n".padEnd(64, " ")));
    const buf = new Uint8Array(128);
    let total = 0;
    for (;;) {
      const n = await junk.read(buf).catch(() => null);
      if (n === null) break;
      total += n;
    }
    junk.close();
    expect(total).toBe(64); // our greeting, then the connection is closed
  });
});

test("pyzmq (libzmq) as the peer: DEALER, SUB and REQ against ROUTER, PUB and REP", async () => {
  const router = new RouterSocket("t"), pub = new PubSocket("t"), rep = new EchoRepSocket("t");
  open.push(router, pub, rep);
  const [rp, pp, hp] = [router.bind("127.0.0.1", 0), pub.bind("127.0.0.1", 0), rep.bind("127.0.0.1", 0)];
  router.onMessage = (f) => {
    router.send(f);
    pub.send([enc.encode("topic"), ...f.slice(1)]);
  };
  const script = `
import zmq, time, json
c = zmq.Context(); out = {}
d = c.socket(zmq.DEALER); d.setsockopt(zmq.IDENTITY, b"py"); d.setsockopt(zmq.RCVTIMEO, 5000); d.connect("tcp://127.0.0.1:${rp}")
s = c.socket(zmq.SUB); s.setsockopt(zmq.SUBSCRIBE, b"top"); s.setsockopt(zmq.RCVTIMEO, 5000); s.connect("tcp://127.0.0.1:${pp}")
q = c.socket(zmq.REQ); q.setsockopt(zmq.RCVTIMEO, 5000); q.connect("tcp://127.0.0.1:${hp}")
time.sleep(0.3)
q.send(b"ping"); out["hb"] = q.recv().decode()
n = 200; got = 0; pubbed = 0
for i in range(n):
    d.send_multipart([b"m", str(i).encode(), b"y" * (i * 37)])
    r = d.recv_multipart(); got += r[1] == str(i).encode() and len(r[2]) == i * 37
    p = s.recv_multipart(); pubbed += p[0] == b"topic" and p[2] == str(i).encode()
out["round_trips"] = got; out["published"] = pubbed
big = b"z" * (8 * 1024 * 1024); d.send_multipart([b"big", big]); out["big"] = len(d.recv_multipart()[1])
print(json.dumps(out)); c.destroy(linger=0)
`;
  const r = await run(PYTHON, ["-c", script], { timeoutMs: 60_000 });
  expect(r.code, r.stderr).toBe(0);
  expect(JSON.parse(r.stdout)).toEqual({
    hb: "ping",
    round_trips: 200,
    published: 200,
    big: 8 * 1024 * 1024,
  });
}, 70_000);
