/**
 * The kernelspec's logos, drawn in code: `deno run -A kernel/assets/logo.ts` writes logo-32x32.png and
 * logo-64x64.png beside this file (committed; kernel/install.ts copies them into the kernelspec, where
 * Notebook and JupyterLab show them in the launcher and the kernel indicator).
 *
 * The mark: four white bars of rising height, a sequence, on a rounded TypeScript-blue square. Each pixel is
 * the coverage of 4x4 samples, so edges are antialiased at both sizes.
 *
 * @example
 * ```ts
 * import { logoPng } from "./logo.ts";
 * const png = logoPng(32);
 * console.log(png.length > 100, png[1] === 0x50); // true true ("\x89PNG")
 * ```
 *
 * @module
 */
import { deflateSync } from "node:zlib";

const BLUE = [0x31, 0x78, 0xc6];
const WHITE = [0xff, 0xff, 0xff];

/** What covers the point (x, y) of the unit square: "bar", "tile" or null (outside the rounded square). */
function shade(x: number, y: number): "bar" | "tile" | null {
  const r = 0.18; // corner radius
  const cx = Math.min(Math.max(x, r), 1 - r), cy = Math.min(Math.max(y, r), 1 - r);
  if ((x - cx) ** 2 + (y - cy) ** 2 > r * r) return null;
  const heights = [0.3, 0.45, 0.6, 0.75];
  const left = 0.17, width = 0.13, gap = 0.05, base = 0.84;
  for (let i = 0; i < heights.length; i++) {
    const x0 = left + i * (width + gap);
    if (x >= x0 && x < x0 + width && y <= base && y >= base - heights[i]) return "bar";
  }
  return "tile";
}

/** The logo as RGBA pixels, `size` x `size`, row-major. */
export function logoPixels(size: number): Uint8Array {
  const px = new Uint8Array(size * size * 4);
  const S = 4; // samples per pixel side
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      let bar = 0, tile = 0;
      for (let j = 0; j < S; j++) {
        for (let i = 0; i < S; i++) {
          const s = shade((x + (i + 0.5) / S) / size, (y + (j + 0.5) / S) / size);
          if (s === "bar") bar++;
          else if (s === "tile") tile++;
        }
      }
      const covered = bar + tile, o = (y * size + x) * 4;
      if (!covered) continue;
      for (let c = 0; c < 3; c++) px[o + c] = Math.round((WHITE[c] * bar + BLUE[c] * tile) / covered);
      px[o + 3] = Math.round((255 * covered) / (S * S));
    }
  }
  return px;
}

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** One PNG chunk: length, type, data, CRC of type and data. */
function chunk(type: string, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  out.set(new TextEncoder().encode(type), 4);
  out.set(data, 8);
  view.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
  return out;
}

/** RGBA pixels as a PNG (8-bit RGBA, no filtering: every scanline starts with filter byte 0). */
export function encodePng(width: number, height: number, rgba: Uint8Array): Uint8Array {
  const header = new Uint8Array(13);
  const h = new DataView(header.buffer);
  h.setUint32(0, width);
  h.setUint32(4, height);
  header.set([8, 6, 0, 0, 0], 8); // bit depth 8, colour type 6 (RGBA), deflate, no filter method, no interlace
  const raw = new Uint8Array(height * (1 + width * 4));
  for (let y = 0; y < height; y++) {
    raw.set(rgba.subarray(y * width * 4, (y + 1) * width * 4), y * (1 + width * 4) + 1);
  }
  const parts = [
    new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", header),
    chunk("IDAT", new Uint8Array(deflateSync(raw))),
    chunk("IEND", new Uint8Array(0)),
  ];
  const png = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    png.set(p, at);
    at += p.length;
  }
  return png;
}

/** The logo at `size` x `size` as PNG bytes. */
export function logoPng(size: number): Uint8Array {
  return encodePng(size, size, logoPixels(size));
}

/** The logo files the kernelspec ships, by name. */
export const LOGO_FILES = ["logo-32x32.png", "logo-64x64.png"] as const;

if (import.meta.main) {
  for (const size of [32, 64]) {
    const file = new URL(`logo-${size}x${size}.png`, import.meta.url);
    Deno.writeFileSync(file, logoPng(size));
    console.log(`wrote ${file.pathname}`);
  }
}
