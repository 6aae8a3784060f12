/**
 * Inside the detector thread: loads the bundle's fused detector and answers inspect requests one at a
 * time. Frames and results cross the thread boundary as transferred buffers (no copies).
 */
import { parentPort, workerData } from 'node:worker_threads';
import { readBundle } from '../bundle/bundle-store.js';
import type { RuntimeOptions } from '../config/runtime-schema.js';
import { Detector, type DepthInputs } from './detector.js';
import type { HostTensor } from '../onnx/tensor.js';

interface Init {
  bundlePath: string;
  runtime: Partial<RuntimeOptions>;
}

export type ThreadRequest =
  | { kind: 'inspect'; id: number; images: HostTensor<'uint8'> | null; depth?: DepthInputs }
  | { kind: 'release'; id: number };

const port = parentPort!;
const { bundlePath, runtime } = workerData as Init;

try {
  const bundle = await readBundle(bundlePath);
  const detector = await Detector.load(bundle, 'detector', runtime, undefined, { fullMap: false });
  port.postMessage({ kind: 'ready', provider: detector.provider });
  port.on('message', async (m: ThreadRequest) => {
    if (m.kind === 'release') {
      await detector.release();
      port.postMessage({ kind: 'released', id: m.id });
      return;
    }
    try {
      const r = await detector.inspect(m.images, m.depth);
      // Outputs are views on ONNX Runtime's buffers: copy into fresh ones we can transfer.
      const result = {
        map: Float32Array.from(r.map),
        scoreMax: Float32Array.from(r.scoreMax),
        scoreMean: Float32Array.from(r.scoreMean),
        batch: r.batch,
        ...(r.mapFull ? { mapFull: Float32Array.from(r.mapFull) } : {}),
      };
      const transfer = [result.map.buffer, result.scoreMax.buffer, result.scoreMean.buffer, ...(result.mapFull ? [result.mapFull.buffer] : [])];
      port.postMessage({ kind: 'result', id: m.id, result }, transfer);
    } catch (e) {
      port.postMessage({ kind: 'error', id: m.id, message: (e as Error).message });
    }
  });
} catch (e) {
  port.postMessage({ kind: 'failed', message: (e as Error).message });
}
