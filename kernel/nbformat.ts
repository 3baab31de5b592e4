/**
 * Notebooks as nbformat 4 JSON, read and written the way Python's nbformat and nbclient do (so an executed
 * notebook is byte-identical to nbclient's but for timings): line splitting, MIME bundles joined on read and
 * split on write, Python's json.dumps layout and float repr, and nbclient's mapping of iopub messages to
 * outputs. Used by `repro.ts`.
 * @module
 */

import type { Message } from "./wire.ts";

// deno-lint-ignore no-explicit-any -- nbformat JSON: checked where it is read, kept as it is otherwise
type Json = any;

/**
 * Python's str.splitlines(True): the line boundaries nbformat splits on when it writes.
 *
 * @example
 * ```ts
 * import { splitLines } from "./nbformat.ts";
 * if (!(JSON.stringify(splitLines("a\r\nb\rc\n")) === '["a\\r\\n","b\\r","c\\n"]')) throw new Error("example failed");
 * if (!(splitLines("").length === 0)) throw new Error("example failed");
 * ```
 */
export function splitLines(s: string): string[] {
  const out: string[] = [];
  // deno-lint-ignore no-control-regex -- \v, \f and \x1c-\x1e are line boundaries to Python
  const re = /\r\n|[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]/g;
  let start = 0;
  for (let m; (m = re.exec(s));) {
    out.push(s.slice(start, m.index + m[0].length));
    start = m.index + m[0].length;
  }
  if (start < s.length) out.push(s.slice(start));
  return out;
}

const isJsonMime = (mime: string) =>
  mime === "application/json" || (mime.startsWith("application/") && mime.endsWith("+json"));

function rejoinBundle(data: Json): void {
  for (const [k, v] of Object.entries(data ?? {})) {
    if (!isJsonMime(k) && Array.isArray(v) && v.every((x) => typeof x === "string")) data[k] = v.join("");
  }
}

function splitBundle(data: Json): void {
  for (const [k, v] of Object.entries(data ?? {})) {
    if (
      typeof v === "string" &&
      (k.startsWith("text/") || k === "application/javascript" || k === "image/svg+xml")
    ) {
      data[k] = splitLines(v);
    }
  }
}

function stripTransient(nb: Json): void {
  for (const k of ["orig_nbformat", "orig_nbformat_minor", "signature"]) delete nb.metadata[k];
  for (const c of nb.cells) delete c.metadata?.trusted;
}

/**
 * Parse a notebook as nbformat's reader does (multi-line strings joined); throws on what is not nbformat 4.
 *
 * @example
 * ```ts
 * import { readNotebook } from "./nbformat.ts";
 * const nb = readNotebook('{"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": ' +
 *   '[{"cell_type": "code", "id": "c1", "source": ["a\\n", "b"], "metadata": {}, "outputs": []}]}');
 * if (!(nb.cells[0].source === "a\nb")) throw new Error("example failed");
 * ```
 */
export function readNotebook(text: string, name = "notebook"): Json {
  let nb: Json;
  try {
    nb = JSON.parse(text);
  } catch (e) {
    throw new Error(`${name} is not JSON: ${(e as Error).message}`);
  }
  if (typeof nb !== "object" || nb === null || Array.isArray(nb)) {
    throw new Error(`${name} is not a notebook`);
  }
  if (nb.nbformat !== 4) {
    throw new Error(`${name} is nbformat ${nb.nbformat ?? "(none)"}; only nbformat 4 is supported`);
  }
  if (!Array.isArray(nb.cells)) throw new Error(`${name} has no cells list`);
  nb.metadata ??= {};
  nb.cells.forEach((c: Json, i: number) => {
    if (typeof c !== "object" || c === null || typeof c.cell_type !== "string") {
      throw new Error(`${name}: cell ${i} has no cell_type`);
    }
    if (Array.isArray(c.source)) c.source = c.source.join("");
    if (typeof c.source !== "string") throw new Error(`${name}: cell ${i} has no source`);
    c.metadata ??= {};
    for (const a of Object.values(c.attachments ?? {})) rejoinBundle(a);
    if (c.cell_type === "code") {
      c.outputs ??= [];
      for (const o of c.outputs) {
        if (o.output_type === "execute_result" || o.output_type === "display_data") rejoinBundle(o.data);
        else if (Array.isArray(o.text)) o.text = o.text.join("");
      }
    }
  });
  stripTransient(nb);
  // nbformat 4.5 requires cell ids; nbformat's reader gives a cell without one (or with a duplicate) a fresh
  // random id, with a warning, so nbclient's output has them: do the same.
  if ((nb.nbformat_minor ?? 0) >= 5) {
    const seen = new Set<string>();
    const given: number[] = [];
    nb.cells.forEach((c: Json, i: number) => {
      if (typeof c.id !== "string" || seen.has(c.id)) {
        c.id = crypto.randomUUID().replaceAll("-", "").slice(0, 8);
        given.push(i + 1);
      }
      seen.add(c.id);
    });
    if (given.length) {
      console.error(
        `${name}: cell(s) ${
          given.join(", ")
        } had no id or a duplicate one (nbformat 4.5 requires unique ids); ` +
          "they were given random ids, as nbformat does",
      );
    }
  }
  return nb;
}

/** Python's float repr for a JSON number (json.dumps writes 1e-05 where JavaScript writes 0.00001). */
function pyNumber(x: number): string {
  if (!Number.isFinite(x)) return x !== x ? "NaN" : x > 0 ? "Infinity" : "-Infinity";
  if (Number.isInteger(x)) return String(x);
  const [mant, exp] = x.toExponential().split("e");
  const e = Number(exp);
  if (e >= -4 && e < 16) return String(x);
  return `${mant}e${e < 0 ? "-" : "+"}${String(Math.abs(e)).padStart(2, "0")}`;
}

/** json.dumps(value, indent=1, sort_keys=True, ensure_ascii=False), as nbformat writes notebooks. */
function pyJson(v: Json, pad = ""): string {
  if (v === null || v === undefined) return "null";
  if (typeof v === "number") return pyNumber(v);
  if (typeof v === "string" || typeof v === "boolean") return JSON.stringify(v);
  const inner = pad + " ";
  if (Array.isArray(v)) {
    if (v.length === 0) return "[]";
    return `[\n${v.map((x) => inner + pyJson(x, inner)).join(",\n")}\n${pad}]`;
  }
  const keys = Object.keys(v).filter((k) => v[k] !== undefined).sort();
  if (keys.length === 0) return "{}";
  return `{\n${keys.map((k) => `${inner}${JSON.stringify(k)}: ${pyJson(v[k], inner)}`).join(",\n")}\n${pad}}`;
}

/**
 * The notebook as nbformat.write writes it: multi-line strings split into lines, keys sorted.
 *
 * @example
 * ```ts
 * import { writeNotebookText } from "./nbformat.ts";
 * const text = writeNotebookText({ nbformat: 4, nbformat_minor: 5, metadata: { x: 1e-5 }, cells: [] });
 * if (!(text === '{\n "cells": [],\n "metadata": {\n  "x": 1e-05\n },\n "nbformat": 4,\n "nbformat_minor": 5\n}\n')) throw new Error("example failed");
 * ```
 */
export function writeNotebookText(nb: Json): string {
  const copy = structuredClone(nb);
  for (const c of copy.cells) {
    if (typeof c.source === "string") c.source = splitLines(c.source);
    for (const a of Object.values(c.attachments ?? {})) splitBundle(a);
    if (c.cell_type === "code") {
      for (const o of c.outputs ?? []) {
        if (o.output_type === "execute_result" || o.output_type === "display_data") splitBundle(o.data);
        else if (o.output_type === "stream" && typeof o.text === "string") o.text = splitLines(o.text);
      }
    }
  }
  stripTransient(copy);
  return pyJson(copy) + "\n";
}

// ------------------------------------------------------------------------------------------ executing

/** nbclient's timestamp(): the message date with microseconds, e.g. 2026-12-06T10:00:00.123000Z. */
export function timestamp(m: Message): string {
  const d = String(m.header.date ?? "");
  const z = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z$/.exec(d);
  if (z) return `${z[1]}.${(z[2] ?? "").padEnd(6, "0").slice(0, 6)}Z`;
  const t = new Date(d);
  const iso = (Number.isNaN(t.getTime()) ? new Date() : t).toISOString();
  return iso.replace(/\.(\d{3})Z$/, ".$1000Z");
}

/** nbformat.v4.output_from_msg. */
export function outputFromMsg(type: string, c: Json): Json | null {
  switch (type) {
    case "execute_result":
      return {
        output_type: type,
        metadata: c.metadata ?? {},
        data: c.data ?? {},
        execution_count: c.execution_count,
      };
    case "stream":
      return { output_type: type, name: c.name ?? "stdout", text: c.text ?? "" };
    case "display_data":
      return { output_type: type, metadata: c.metadata ?? {}, data: c.data ?? {} };
    case "error":
      return {
        output_type: type,
        ename: c.ename ?? "",
        evalue: c.evalue ?? "",
        traceback: c.traceback ?? [],
      };
  }
  return null;
}
