/**
 * The kernel's ZMTP transport (kernel/zmtp.ts, unchanged) over kernel/transport_node.ts's `node:net`
 * sockets: what the kernel's wire would be under Bun. Under Bun the `Deno.listen`/`Deno.connect` it calls
 * are the node:net shim; under Deno they are Deno's own, so the same checks pass on both. Peers: the
 * transport's own DEALER and SUB clients, then pyzmq (libzmq) as DEALER and REQ.
 */
import { afterAll, afterEach, expect, test } from "vitest";
import { execFile } from "node:child_process";
import { installDenoNet, listen } from "../kernel/transport_node.ts";
import { ClientSocket, EchoRepSocket, PubSocket, RouterSocket, setLogger } from "../kernel/zmtp.ts";

const uninstall = installDenoNet(); // Bun: Deno.listen/connect on node:net; Deno: nothing changes
afterAll(uninstall);
setLogger(() => {});
const enc = new TextEncoder();
const dec = new TextDecoder();
const open: { close(): void }[] = [];
afterEach(() => {
  for (const s of open.splice(0)) s.close();
});
const PYTHON = "/usr/bin/python3"; // Debian's, with python3-zmq (as the kernel tests)

/** A ROUTER on a free port that echoes every message back to its sender. */
function echoRouter(): { router: RouterSocket; port: number } {
  const router = new RouterSocket("shell");
  router.onMessage = (frames) => void router.send(frames);
  const port = router.bind("127.0.0.1", 0);
  open.push(router);
  return { router, port };
}

test("a DEALER's multipart messages come back from a ROUTER: empty, short and 3 MiB frames, in order", async () => {
  // deno-lint-ignore no-explicit-any
  const g = globalThis as any;
  expect(g.Deno.listen === listen).toBe(!!g.Bun); // under Bun the node:net shim is what zmtp.ts calls
  const { port } = echoRouter();
  const dealer = await ClientSocket.connect("DEALER", "127.0.0.1", port);
  open.push(dealer);
  expect(dealer.peerType).toBe("ROUTER");
  const big = Uint8Array.from({ length: 3 << 20 }, (_, i) => (i * 7) & 255);
  await dealer.send([enc.encode("first"), new Uint8Array(), big]);
  for (let i = 0; i < 50; i++) await dealer.send([enc.encode(`m${i}`)]);
  const first = (await dealer.recv())!;
  expect(dec.decode(first[0])).toBe("first");
  expect(first[1].length).toBe(0);
  expect(first[2].length).toBe(big.length);
  expect(first[2].every((v, i) => v === big[i])).toBe(true);
  for (let i = 0; i < 50; i++) expect(dec.decode((await dealer.recv())![0])).toBe(`m${i}`);
});

test("a SUB gets what a PUB publishes under its topic, and nothing else", async () => {
  const pub = new PubSocket("iopub");
  const port = pub.bind("127.0.0.1", 0);
  open.push(pub);
  const sub = await ClientSocket.connect("SUB", "127.0.0.1", port, { subscribe: [enc.encode("status")] });
  open.push(sub);
  for (let i = 0; i < 200 && pub.subscriberCount === 0; i++) await new Promise((r) => setTimeout(r, 10));
  expect(pub.subscriberCount).toBe(1);
  await pub.send([enc.encode("other"), enc.encode("dropped")]);
  await pub.send([enc.encode("status"), enc.encode("idle")]);
  expect((await sub.recv())!.map((f) => dec.decode(f))).toEqual(["status", "idle"]);
});

test("pyzmq (libzmq) as DEALER against the ROUTER and as REQ against the heartbeat REP", async () => {
  const { port } = echoRouter();
  const rep = new EchoRepSocket("hb");
  const hb = rep.bind("127.0.0.1", 0);
  open.push(rep);
  const py = `
import sys, zmq
ctx = zmq.Context()
d = ctx.socket(zmq.DEALER); d.setsockopt(zmq.RCVTIMEO, 10000); d.connect("tcp://127.0.0.1:%s" % sys.argv[1])
big = bytes(i % 251 for i in range(1 << 20))
d.send_multipart([b"hello", b"", big])
got = d.recv_multipart()
assert got == [b"hello", b"", big], [len(f) for f in got]
r = ctx.socket(zmq.REQ); r.setsockopt(zmq.RCVTIMEO, 10000); r.connect("tcp://127.0.0.1:%s" % sys.argv[2])
r.send(b"ping"); assert r.recv() == b"ping"
print("ok")
`;
  const out = await new Promise<string>((resolve, reject) =>
    execFile(
      PYTHON,
      ["-c", py, String(port), String(hb)],
      { timeout: 30_000 },
      (e, stdout, stderr) =>
        e ? reject(new Error(`pyzmq peer failed: ${e.message}\n${stderr}`)) : resolve(stdout),
    )
  );
  expect(out.trim()).toBe("ok");
});
