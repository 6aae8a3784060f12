// Worker-thread entry for DetectorThread: plain JavaScript because a worker starts without the main
// thread's TypeScript loader; it registers tsx, then runs the TypeScript side.
import { register } from 'tsx/esm/api';

register();
await import('./detector-thread-main.ts');
