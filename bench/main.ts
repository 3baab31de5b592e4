/**
 * `deno task bench [name...] [-- args]`: runs the named benchmarks (default: all), each printing a table
 * and writing bench/results/<name>.json. `deno task bench matmul 256 512` passes sizes to matmul.
 * Each benchmark prints the load average at its start; above 1.5 no target is called met unless
 * SEQLAB_BENCH_LOADED=1 (see bench/util.ts).
 * @module
 */

import { benchStart } from "./util.ts";

const BENCHES = [
  "matmul",
  "rowwise",
  "train",
  "ssm",
  "attention",
  "decode",
  "paged",
  "profile",
  "moe",
  "conv",
  "vision_ops",
  "soak",
] as const;

const args = [...Deno.args];
const isBench = (a: string) => (BENCHES as readonly string[]).includes(a);
const names = args.filter(isBench);
// the rest goes to the benchmarks: sizes (numbers) and their own words (train's "rss" and "baseline",
// attention's "peers", profile's "detail")
const rest = args.filter((a) => !isBench(a));
for (const a of rest) {
  if (Number.isNaN(Number(a)) && !["rss", "peers", "detail", "baseline"].includes(a)) {
    console.error(`unknown benchmark "${a}"; available: ${BENCHES.join(", ")}`);
    Deno.exit(2);
  }
}
for (const name of names.length ? names : BENCHES) {
  console.log(`\n=== bench ${name} ===`);
  benchStart(name);
  const mod = await import(`./${name}.ts`);
  await mod.main(rest);
}
