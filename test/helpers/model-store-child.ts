/**
 * Child process for the model store's crash test (test/model-store.test.ts), run from the TypeScript
 * sources: `node --import tsx test/helpers/model-store-child.ts <store dir> <op> [args...]`.
 *
 *   stage-commit <bundle>          stage and commit one bundle
 *   stage-commit-activate <bundle> the same, then activate it
 *   activate <name> | rollback | prune <keep>
 *   churn <bundle>...              forever: stage, commit, activate a random one; roll back or prune now and then
 *
 * Prints "ready" once the store is open and "done <op> <name>" after each completed step, so the test
 * knows what finished before it killed the process. Stops at AST_EDGE_TEST_PAUSE_AT (see model-store.ts).
 */
import { ModelStore } from '../../src/bundle/model-store.js';

const [dir, op, ...args] = process.argv.slice(2);
if (!dir || !op) throw new Error('usage: model-store-child.ts <store dir> <op> [args...]');
const say = (line: string) => process.stdout.write(`${line}\n`);

const keep = op === 'prune' ? Number(args[0]) : 1;
const store = await ModelStore.open(dir, { keep, freeSpaceMarginBytes: 0 });
say('ready');

async function stageCommit(bundle: string): Promise<string> {
  const v = await store.commit(await store.stage(bundle));
  say(`done commit ${v.name}`);
  return v.name;
}

switch (op) {
  case 'stage-commit':
    await stageCommit(args[0]!);
    break;
  case 'stage-commit-activate':
    say(`done activate ${(await store.activate(await stageCommit(args[0]!))).name}`);
    break;
  case 'activate':
    say(`done activate ${(await store.activate(args[0]!)).name}`);
    break;
  case 'rollback':
    say(`done rollback ${(await store.rollback()).name}`);
    break;
  case 'prune':
    say(`done prune ${(await store.prune()).join(',')}`);
    break;
  case 'churn':
    for (let i = 0; ; i++) {
      const name = await stageCommit(args[i % args.length]!);
      say(`done activate ${(await store.activate(name)).name}`);
      if (i % 3 === 2 && store.pointers().previous) say(`done rollback ${(await store.rollback()).name}`);
      say(`done prune ${(await store.prune()).join(',')}`);
    }
  default:
    throw new Error(`unknown op ${op}`);
}
