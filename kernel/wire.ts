/**
 * Jupyter messages on the wire (messaging protocol 5.3):
 *
 *   [routing ids..., "<IDS|MSG>", hmac hex, header, parent_header, metadata, content, buffers...]
 *
 * Signatures are HMAC-SHA256 over the four JSON frames, hex encoded. They are computed synchronously
 * (node:crypto) so that signing never reorders messages on a socket.
 *
 * @module
 */
import { createHmac, timingSafeEqual } from "node:crypto";

/** Protocol version this kernel speaks. */
export const PROTOCOL_VERSION = "5.3";
const DELIM = new TextEncoder().encode("<IDS|MSG>");
const enc = new TextEncoder();
const dec = new TextDecoder();

/** A message header. */
export interface Header {
  msg_id: string;
  session: string;
  username: string;
  date: string;
  msg_type: string;
  version: string;
  [k: string]: unknown;
}

/** A decoded Jupyter message. */
export interface Message {
  identities: Uint8Array[];
  header: Header;
  parent_header: Partial<Header>;
  metadata: Record<string, unknown>;
  content: Record<string, unknown>;
  buffers: Uint8Array[];
}

/**
 * How many verified message digests the kernel remembers to refuse replays (ipykernel's digest history
 * size). The history lives in the kernel process: a restarted kernel with the same key starts empty.
 */
export const REPLAY_HISTORY = 65_536;

/** Signs and verifies messages with the connection file's key. An empty key disables signing. */
export class Signer {
  private key: Uint8Array;
  /**
   * Digests of the last {@link REPLAY_HISTORY} verified messages (a ring, oldest overwritten first): a
   * replayed message is rejected like a forged one. ipykernel keeps 65,536 too, but culls a random tenth
   * when full; a ring always remembers the most recent ones.
   */
  private seen = new Set<string>();
  private ring: string[] = [];
  private next = 0;

  constructor(key: string, readonly scheme = "hmac-sha256") {
    if (key && scheme !== "hmac-sha256") throw new Error(`unsupported signature scheme ${scheme}`);
    this.key = enc.encode(key);
  }

  /** Hex HMAC of the given frames ("" without a key). */
  sign(frames: Uint8Array[]): string {
    if (this.key.length === 0) return "";
    const h = createHmac("sha256", this.key);
    for (const f of frames) h.update(f);
    return h.digest("hex");
  }

  /** Check a signature in constant time and against replays; returns a reason on failure. */
  verify(sig: string, frames: Uint8Array[]): string | null {
    if (this.key.length === 0) return null;
    if (!sig) return "missing signature";
    const want = this.sign(frames);
    const a = enc.encode(sig), b = enc.encode(want);
    if (a.length !== b.length || !timingSafeEqual(a, b)) return "bad signature";
    if (this.seen.has(sig)) return "replayed signature";
    this.seen.add(sig);
    if (this.ring.length < REPLAY_HISTORY) this.ring.push(sig);
    else {
      this.seen.delete(this.ring[this.next]);
      this.ring[this.next] = sig;
      this.next = (this.next + 1) % REPLAY_HISTORY;
    }
    return null;
  }
}

/** Result of decoding: a message, or why the frames were rejected. */
export type Decoded = { ok: true; msg: Message } | { ok: false; reason: string };

/** Split, verify and parse a multipart message received on a ROUTER (identities first). */
export function decode(frames: Uint8Array[], signer: Signer): Decoded {
  let d = -1;
  for (let i = 0; i < frames.length; i++) {
    const f = frames[i];
    if (f.length === DELIM.length && f.every((x, j) => x === DELIM[j])) {
      d = i;
      break;
    }
  }
  if (d < 0) return { ok: false, reason: "no <IDS|MSG> delimiter" };
  if (frames.length < d + 6) {
    return { ok: false, reason: `only ${frames.length - d - 1} frames after delimiter` };
  }
  const sig = dec.decode(frames[d + 1]);
  const body = frames.slice(d + 2, d + 6);
  const bad = signer.verify(sig, body);
  if (bad) return { ok: false, reason: bad };
  try {
    const [header, parent_header, metadata, content] = body.map((f) => JSON.parse(dec.decode(f)));
    if (!header || typeof header.msg_type !== "string") {
      return { ok: false, reason: "header without msg_type" };
    }
    if (typeof content !== "object" || content === null) {
      return { ok: false, reason: "content is not an object" };
    }
    return {
      ok: true,
      msg: {
        identities: frames.slice(0, d),
        header,
        parent_header: parent_header ?? {},
        metadata: metadata ?? {},
        content,
        buffers: frames.slice(d + 6),
      },
    };
  } catch (e) {
    return { ok: false, reason: `bad JSON: ${(e as Error).message}` };
  }
}

/** Serialize and sign a message. */
export function encode(
  signer: Signer,
  identities: Uint8Array[],
  header: Header,
  parent: Partial<Header>,
  metadata: Record<string, unknown>,
  content: unknown,
  buffers: Uint8Array[] = [],
): Uint8Array[] {
  const body = [header, parent, metadata, content].map((x) => enc.encode(JSON.stringify(x)));
  return [...identities, DELIM, enc.encode(signer.sign(body)), ...body, ...buffers];
}

/** A fresh header for a message this kernel sends. */
export function header(msg_type: string, session: string): Header {
  return {
    msg_id: crypto.randomUUID(),
    session,
    username: "kernel",
    date: new Date().toISOString(),
    msg_type,
    version: PROTOCOL_VERSION,
  };
}
