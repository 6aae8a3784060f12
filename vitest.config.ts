import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 300_000,
    // ONNX Runtime sessions are heavy; two cores are shared by every worker.
    maxWorkers: 2,
    reporters: ['default', './test/summary-reporter.ts'],
  },
});
