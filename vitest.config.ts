import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["**/*_test.ts", "test/**/*.test.ts"],
    exclude: ["node_modules/**", "out/**"],
    testTimeout: 120_000,
    hookTimeout: 60_000,
    // one GPU-using file at a time keeps the 2-core software adapter from thrashing
    fileParallelism: false,
  },
});
