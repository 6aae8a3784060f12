/**
 * Generates the real-data datasets of issue 3 in the MVTec AD layout:
 *   <out>/fashion-mnist/<class>/   one-class Fashion-MNIST (train on one class, test on all ten), 10 classes
 *   <out>/textures/<texture>/      brick, grass, gravel crops with synthetic defects and masks
 * Each class folder can be passed to `ast-agent train --data <out>/fashion-mnist --class <class>`.
 *
 *   npx tsx tools/datasets/make-datasets.ts --out DIR [--only fashion-mnist|textures] [--classes a,b]
 *       [--train-limit N] [--test-per-class N] [--textures brick,grass] [--size N] [--train-count N]
 *       [--test-good N] [--test-defect N] [--seed N]
 */
import { join, resolve } from 'node:path';
import { Command, InvalidArgumentError } from 'commander';
import {
  FASHION_MNIST_CLASSES, FASHION_MNIST_DEFAULTS, TEXTURE_DEFAULTS, TEXTURES,
  loadFashionMnist, writeOneClassDataset, writeTextureDataset, DatasetError,
} from '../../src/train/datasets/index.js';

const int = (min: number) => (v: string): number => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`expected an integer ≥ ${min}`);
  return n;
};
const list = (allowed: readonly string[]) => (v: string): string[] => {
  const items = v.split(',').map((s) => s.trim()).filter(Boolean);
  const bad = items.filter((i) => !allowed.includes(i));
  if (bad.length) throw new InvalidArgumentError(`unknown: ${bad.join(', ')} (choose from ${allowed.join(', ')})`);
  return items;
};

const program = new Command()
  .name('make-datasets')
  .description('Write the one-class Fashion-MNIST and synthetic-defect texture datasets (MVTec AD layout)')
  .requiredOption('--out <dir>', 'output folder')
  .option('--only <what>', 'fashion-mnist or textures (default: both)')
  .option('--classes <list>', 'Fashion-MNIST classes (default: all ten)', list(FASHION_MNIST_CLASSES))
  .option('--train-limit <n>', 'Fashion-MNIST training images per class', int(1), FASHION_MNIST_DEFAULTS.trainLimit)
  .option('--test-per-class <n>', 'Fashion-MNIST test images per class', int(1), FASHION_MNIST_DEFAULTS.testPerClass)
  .option('--mnist-size <n>', 'Fashion-MNIST image size', int(1), FASHION_MNIST_DEFAULTS.size)
  .option('--textures <list>', 'textures (default: brick,grass,gravel)', list(TEXTURES))
  .option('--size <n>', 'texture crop size', int(16), TEXTURE_DEFAULTS.size)
  .option('--train-count <n>', 'texture training crops', int(1), TEXTURE_DEFAULTS.trainCount)
  .option('--test-good <n>', 'texture good test crops', int(0), TEXTURE_DEFAULTS.testGoodCount)
  .option('--test-defect <n>', 'texture test crops per defect type', int(0), TEXTURE_DEFAULTS.testDefectCount)
  .option('--seed <n>', 'seed of the texture generator', int(0), TEXTURE_DEFAULTS.seed);

async function main(): Promise<void> {
  const o = program.parse().opts<{
    out: string; only?: string; classes?: string[]; trainLimit: number; testPerClass: number; mnistSize: number;
    textures?: string[]; size: number; trainCount: number; testGood: number; testDefect: number; seed: number;
  }>();
  if (o.only && o.only !== 'fashion-mnist' && o.only !== 'textures') throw new InvalidArgumentError('--only must be fashion-mnist or textures');
  const out = resolve(o.out);
  const started = performance.now();
  if (o.only !== 'textures') {
    const data = { train: await loadFashionMnist('train'), test: await loadFashionMnist('test') };
    for (const cls of o.classes ?? FASHION_MNIST_CLASSES) {
      const t0 = performance.now();
      const s = await writeOneClassDataset({ goodClass: cls, out: join(out, 'fashion-mnist', cls), size: o.mnistSize, trainLimit: o.trainLimit, testPerClass: o.testPerClass, data });
      const defects = Object.values(s.testDefect).reduce((a, b) => a + b, 0);
      console.log(`fashion-mnist/${cls.padEnd(11)} train ${s.train}, test ${s.testGood} good + ${defects} other-class (${Object.keys(s.testDefect).length} types), ${s.size}×${s.size}  ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    }
  }
  if (o.only !== 'fashion-mnist') {
    for (const texture of o.textures ?? TEXTURES) {
      const t0 = performance.now();
      const s = await writeTextureDataset({ texture, out: join(out, 'textures', texture), size: o.size, trainCount: o.trainCount, testGoodCount: o.testGood, testDefectCount: o.testDefect, seed: o.seed });
      const areas = Object.entries(s.meanArea).map(([k, v]) => `${k} ${(100 * v).toFixed(1)}%`).join(', ');
      const defects = Object.values(s.testDefect).reduce((a, b) => a + b, 0);
      console.log(`textures/${texture.padEnd(7)} train ${s.train}, test ${s.testGood} good + ${defects} defective with masks, ${s.size}×${s.size}; mean defect area: ${areas}  ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    }
  }
  console.log(`wrote ${out} in ${((performance.now() - started) / 1000).toFixed(1)} s`);
}

main().catch((e: unknown) => {
  console.error(e instanceof DatasetError || e instanceof InvalidArgumentError ? `make-datasets: ${e.message}` : e);
  process.exit(1);
});
