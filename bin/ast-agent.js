#!/usr/bin/env node
// The product runs its TypeScript sources through tsx: no build step, so nothing stale can run.
import { register } from 'tsx/esm/api';

register();
await import('../src/cli/main.ts');
