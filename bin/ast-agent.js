#!/usr/bin/env node
// CommonJS on purpose (bin/package.json): this line runs before anything touches libuv's thread pool, so
// it can still size it. Each GStreamer pipeline keeps about two pool threads blocked; Node's default of 4
// would leave an RGB-D station's file writes queued behind them. An operator's own value wins.
process.env.UV_THREADPOOL_SIZE ||= '16';

// The product runs its TypeScript sources through tsx: no build step, so nothing stale can run.
import('tsx/esm/api')
  .then(({ register }) => {
    register();
    return import('../src/cli/main.ts');
  })
  .catch((e) => {
    console.error(e);
    process.exit(1);
  });
