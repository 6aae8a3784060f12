/**
 * ast-agent: the one entry point. Each sub-command parses its flags here and calls a function that
 * does the work; errors are printed as one line naming what is wrong, with a non-zero exit code.
 */
import { readFileSync } from 'node:fs';
import { mkdir, writeFile, rename } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { Command, InvalidArgumentError, Option } from 'commander';
import { createLogger } from './logger.js';
import { describeBundle } from './describe-bundle.js';
import { scoreCommand } from './score-command.js';
import { demoCommand } from './demo-command.js';
import { runCommand } from './run-command.js';
import { keygenCommand, signCommand, verifyCommand } from './signing-commands.js';
import { packBundle, readBundle } from '../bundle/bundle-store.js';
import { importReference } from '../bundle/import-reference.js';
import { ModeSchema, PRESETS, PresetNameSchema } from '../config/model-schema.js';
import { ProviderSchema, type RuntimeOptions } from '../config/runtime-schema.js';
import { ensureDefaultBackbone } from '../model/backbone/mobilenet-v2.js';
import { train } from '../train/trainer.js';
import { evaluate } from '../train/evaluate.js';
import { createProgress } from '../train/progress.js';

const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
export const VERSION = pkg.version;

const logger = createLogger('ast-agent');

function int(name: string) {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`${name} must be a whole number, got "${v}"`);
    return n;
  };
}

function size(v: string): { height: number; width: number } {
  const m = /^(\d+)x(\d+)$/.exec(v);
  if (!m) throw new InvalidArgumentError(`expected HEIGHTxWIDTH such as 24x24, got "${v}"`);
  return { height: Number(m[1]), width: Number(m[2]) };
}

function providers(v: string) {
  return v.split(',').map((name) => {
    const parsed = ProviderSchema.safeParse(name.trim());
    if (!parsed.success) throw new InvalidArgumentError(`unknown execution provider "${name}" (use tensorrt, cuda, cpu)`);
    return parsed.data;
  });
}

function runtimeOptions(o: { providers?: RuntimeOptions['providers']; threads?: number }): Partial<RuntimeOptions> {
  return { ...(o.providers ? { providers: o.providers } : {}), ...(o.threads !== undefined ? { intraOpThreads: o.threads } : {}) };
}

const providerOption = () =>
  new Option('--providers <list>', 'execution providers to try in order, e.g. tensorrt,cuda,cpu').argParser(providers);
const threadsOption = () => new Option('--threads <n>', 'intra-op threads (0: one per core)').argParser(int('--threads'));

export function buildProgram(): Command {
  const program = new Command('ast-agent')
    .description('Edge inspection with the AST anomaly detector on ONNX Runtime')
    .version(VERSION)
    .showHelpAfterError();

  program
    .command('demo')
    .description('a demo line on this machine: CC0 texture parts through GStreamer into the agent, results over an in-process MQTT broker')
    .option('--fps <n>', 'parts per second fed by the file source', parseFloat, 4)
    .option('--loop', 'keep feeding the parts until Ctrl-C')
    .option('--mqtt-port <port>', 'port of the in-process broker (0: any free port)', int('--mqtt-port'), 0)
    .option('--http-port <port>', 'port of /healthz and /metrics (0: any free port)', int('--http-port'), 0)
    .action(async (o) => {
      await demoCommand(VERSION, logger, { fps: o.fps, loop: o.loop === true, mqttPort: o.mqttPort, httpPort: o.httpPort });
    });

  program
    .command('run')
    .description('the inspection daemon: camera → detector → MQTT, as configured in one YAML file')
    .requiredOption('--config <file>', 'agent configuration (YAML; see deploy/examples/)')
    .action(async (o) => {
      await runCommand(o.config, VERSION, logger);
    });

  program
    .command('score')
    .description('score feature maps [N,C,h,w] from a .npy file with a bundle; writes {"samples":[{max,mean}]}')
    .requiredOption('--bundle <dir>', 'bundle folder or .tar')
    .option('--features <file.npy>', 'float32 features [N, C, h, w]')
    .option('--depth <file.npy>', 'depth modes: prepared depth [N, 8h, 8w]')
    .option('--mask <file.npy>', 'depth modes: foreground mask at feature resolution [N, h, w]')
    .requiredOption('--out <file.json>', 'where to write the image scores')
    .option('--maps <file.npy>', 'also write the [N, h, w] anomaly maps (feature resolution)')
    .addOption(providerOption())
    .addOption(threadsOption())
    .action(async (o) => {
      await scoreCommand({ ...o, runtime: runtimeOptions(o) }, logger);
    });

  program
    .command('import-reference')
    .description("write a bundle from a checkpoint trained with the authors' PyTorch code (safetensors state_dicts)")
    .requiredOption('--teacher <file>', 'teacher state_dict (.safetensors); permutations as perm.0… or NumPy seed order')
    .requiredOption('--student <file>', 'student state_dict (.safetensors)')
    .addOption(new Option('--preset <name>', 'preset for what the shapes do not say').choices(PresetNameSchema.options).default('paper'))
    .addOption(new Option('--mode <mode>', 'rgb, depth or rgbd').choices(ModeSchema.options).default('rgb'))
    .requiredOption('--out <dir>', 'bundle folder to write')
    .option('--backbone <file.onnx>', 'ONNX feature extractor (NCHW float input); without it the bundle is feature-level')
    .option('--backbone-stride <n>', 'stride of the backbone output', int('--backbone-stride'))
    .option('--input-size <n>', 'square input side in pixels', int('--input-size'))
    .option('--feature-size <HxW>', 'feature map size (default input/stride)', size)
    .option('--id <id>', 'bundle id')
    .option('--bundle-version <semver>', 'bundle version', '1.0.0')
    .action(async (o) => {
      const manifest = await importReference({
        teacherFile: o.teacher,
        studentFile: o.student,
        preset: o.preset,
        mode: o.mode,
        out: o.out,
        backboneFile: o.backbone,
        backboneStride: o.backboneStride,
        inputSize: o.inputSize,
        featureSize: o.featureSize,
        id: o.id,
        version: o.bundleVersion,
        toolVersion: VERSION,
      });
      console.log(describeBundle(manifest, resolve(o.out)));
    });

  program
    .command('train')
    .description('train (or fine-tune) a bundle from good images only')
    .requiredOption('--data <dir>', 'dataset: MVTec AD, MVTec 3D-AD or a folder of good images')
    .option('--class <name>', 'class folder inside a multi-class dataset')
    .addOption(new Option('--preset <name>', 'model size').choices(PresetNameSchema.options).default('edge'))
    .addOption(new Option('--mode <mode>', 'rgb, depth or rgbd').choices(ModeSchema.options).default('rgb'))
    .requiredOption('--out <dir>', 'bundle folder to write')
    .option('--from <bundle>', 'fine-tune from this bundle')
    .addOption(new Option('--finetune <which>', 'with --from: which networks to retrain').choices(['teacher', 'student', 'both']).default('both'))
    .option('--epochs <n>', 'epochs for teacher and student (default: the preset)', int('--epochs'))
    .option('--teacher-epochs <n>', 'teacher epochs', int('--teacher-epochs'))
    .option('--student-epochs <n>', 'student epochs', int('--student-epochs'))
    .option('--batch-size <n>', 'batch size (default: the preset, 8)', int('--batch-size'))
    .option('--lr <rate>', 'Adam learning rate of both phases (default: the preset)', parseFloat)
    .option('--teacher-lr <rate>', 'learning rate of the teacher', parseFloat)
    .option('--student-lr <rate>', 'learning rate of the student', parseFloat)
    .option('--patience <n>', 'early stop after this many epochs without validation improvement', int('--patience'))
    .option('--validation <fraction>', 'share of good images held out', parseFloat)
    .option('--backbone <file.onnx>', 'feature extractor (required for --preset paper)')
    .option('--input-size <n>', 'square input side', int('--input-size'))
    .option('--context-pad <px>', 'mirrored context around frames before the backbone (default: the preset)', int('--context-pad'))
    .option('--teacher-hidden <n>', 'hidden channels of the teacher subnets', int('--teacher-hidden'))
    .option('--student-width <n>', 'student width', int('--student-width'))
    .option('--residual-blocks <n>', 'student residual blocks', int('--residual-blocks'))
    .addOption(new Option('--score <kind>', 'image score for the verdict: max of the anomaly map (paper) or mean').choices(['max', 'mean']))
    .option('--target-frr <rate>', 'calibrate the threshold for this false-reject rate on held-out good images', parseFloat, 0.01)
    .option('--calibrate-best-f1', "calibrate for best F1 on the dataset's labelled defective test images")
    .option('--max-train-images <n>', 'use at most this many training images', int('--max-train-images'))
    .option('--work-dir <dir>', 'checkpoints and feature cache (default <out>.work)')
    .option('--checkpoint-every <n>', 'steps between checkpoints', int('--checkpoint-every'), 50)
    .option('--keep-work', 'keep the work folder after success')
    .option('--seed <n>', 'random seed', int('--seed'), 1)
    .option('--id <id>', 'bundle id')
    .option('--bundle-version <semver>', 'bundle version', '1.0.0')
    .addOption(providerOption())
    .addOption(threadsOption())
    .action(async (o) => {
      const result = await train(
        {
          data: o.data,
          className: o.class,
          preset: o.preset,
          mode: o.mode,
          out: o.out,
          from: o.from,
          finetune: o.finetune,
          teacherEpochs: o.teacherEpochs ?? o.epochs,
          studentEpochs: o.studentEpochs ?? o.epochs,
          batchSize: o.batchSize,
          lr: o.lr,
          teacherLr: o.teacherLr,
          studentLr: o.studentLr,
          patience: o.patience,
          validationFraction: o.validation,
          backbone: o.backbone,
          inputSize: o.inputSize,
          contextPad: o.contextPad,
          teacherHidden: o.teacherHidden,
          studentWidth: o.studentWidth,
          residualBlocks: o.residualBlocks,
          aggregation: o.score,
          calibration: o.calibrateBestF1 ? { method: 'best-f1' } : { method: 'false-reject-rate', target: o.targetFrr },
          maxTrainImages: o.maxTrainImages,
          workDir: o.workDir,
          checkpointEvery: o.checkpointEvery,
          keepWork: o.keepWork,
          seed: o.seed,
          id: o.id,
          version: o.bundleVersion,
          runtime: runtimeOptions(o),
          toolVersion: VERSION,
        },
        logger,
        createProgress(logger),
      );
      const c = result.manifest.calibration!;
      console.log(
        `trained ${result.manifest.id} ${result.manifest.version} in ${result.seconds.toFixed(0)} s on ${result.trainImages} images (${result.validationImages} held out)${result.resumed ? ', resumed from a checkpoint' : ''}`,
      );
      console.log(`threshold ${c.threshold.toPrecision(6)} (${c.method}), written to ${resolve(o.out)}`);
    });

  program
    .command('eval')
    .description("evaluate a bundle on a dataset's test split; prints image AUROC and writes a report")
    .requiredOption('--bundle <dir>', 'bundle folder or .tar')
    .requiredOption('--data <dir>', 'dataset with a test split')
    .option('--class <name>', 'class folder inside a multi-class dataset')
    .requiredOption('--report <dir>', 'report folder to write')
    .option('--threshold <raw>', "judge with this raw threshold instead of the bundle's", parseFloat)
    .addOption(providerOption())
    .addOption(threadsOption())
    .action(async (o) => {
      const m = await evaluate(
        { bundle: o.bundle, data: o.data, className: o.class, report: o.report, runtime: runtimeOptions(o), threshold: o.threshold },
        logger,
      );
      if (m.image.aurocMax !== null) console.log(`image AUROC: ${m.image.aurocMax.toFixed(4)}`);
      if (m.image.aurocMean !== null) console.log(`image AUROC (mean score): ${m.image.aurocMean.toFixed(4)}`);
      if (m.pixel) console.log(`pixel AUROC: ${m.pixel.auroc.toFixed(4)}`);
      const t = m.atThreshold;
      console.log(
        `at threshold ${t.threshold.toPrecision(6)}: false-reject rate ${t.falseRejectRate ?? 'n/a'}, escape rate ${t.escapeRate ?? 'n/a'} (${t.tn + t.fp} good, ${t.tp + t.fn} defective)`,
      );
      console.log(`report: ${resolve(o.report)}`);
    });

  program
    .command('keygen')
    .description('create an Ed25519 key pair for signing bundles (<name>.key stays on the signing machine, <name>.pub goes to devices)')
    .requiredOption('--out <dir>', 'folder to write the key pair to')
    .option('--name <name>', 'file name without extension (default ast-edge-<key id>)')
    .action(async (o: { out: string; name?: string }) => {
      process.exitCode = await keygenCommand(o.out, o.name);
    });

  const bundle = program.command('bundle').description('inspect, check, pack, sign and verify model bundles');
  bundle
    .command('sign')
    .argument('<bundle>', 'bundle folder or .tar (a .tar is repacked in place)')
    .requiredOption('--key <file.key>', 'Ed25519 private key (PKCS#8 PEM) from ast-agent keygen')
    .description('sign a bundle: writes signature.json over the exact bytes of manifest.json')
    .action(async (path: string, o: { key: string }) => {
      process.exitCode = await signCommand(o.key, path);
    });
  bundle
    .command('verify')
    .argument('<bundle>', 'bundle folder or .tar')
    .requiredOption('--pub <file.pub>', 'trusted public key; repeat for several (key rotation)', (v: string, prev: string[] = []) => [...prev, v])
    .description('check every file hash and the signature by a trusted key; exit 1 when the bundle is not trusted')
    .action(async (path: string, o: { pub: string[] }) => {
      process.exitCode = await verifyCommand(o.pub, path);
    });
  bundle
    .command('inspect')
    .argument('<bundle>', 'bundle folder or .tar')
    .description('print the manifest in words (after checking every file hash)')
    .option('--json', 'print the manifest as JSON instead')
    .action(async (path: string, o: { json?: boolean }) => {
      const b = await readBundle(path);
      console.log(o.json ? JSON.stringify(b.manifest, null, 2) : describeBundle(b.manifest, b.source));
    });
  bundle
    .command('check')
    .argument('<bundle>', 'bundle folder or .tar')
    .description('validate the manifest and every file hash; exit 0 when the bundle is complete')
    .action(async (path: string) => {
      const b = await readBundle(path);
      console.log(`ok: ${b.manifest.id} ${b.manifest.version}, ${Object.keys(b.manifest.files).length} files verified`);
    });
  bundle
    .command('pack')
    .argument('<bundle>', 'bundle folder')
    .requiredOption('--out <file.tar>', 'archive to write')
    .description('pack a bundle folder into one .tar file')
    .action(async (path: string, o: { out: string }) => {
      await packBundle(path, o.out);
      console.log(`wrote ${resolve(o.out)}`);
    });

  program
    .command('backbone')
    .description('default backbone (MobileNetV2 α=1.4 from the nsfwjs package)')
    .command('build')
    .description('generate the ONNX backbone and cache it under models/cache (or --out)')
    .option('--layers <list>', "comma-separated cut layers (default: the edge preset's)", PRESETS.edge.backbone.layers.join(','))
    .option('--out <file.onnx>', 'also copy the ONNX file here')
    .action(async (o: { layers: string; out?: string }) => {
      const b = await ensureDefaultBackbone({ layers: o.layers.split(',').map((s) => s.trim()) });
      if (o.out) {
        await mkdir(dirname(resolve(o.out)), { recursive: true });
        const tmp = `${o.out}.tmp-${process.pid}`;
        await writeFile(tmp, readFileSync(b.file));
        await rename(tmp, o.out);
      }
      console.log(
        `${b.cached ? 'cached' : 'built'} ${o.out ?? b.file}: input ${b.input.name} NCHW RGB in [0,1]; outputs ${b.outputs
          .map((x) => `${x.name} (${x.channels} ch, stride ${x.stride})`)
          .join(', ')}`,
      );
    });

  return program;
}

async function main(): Promise<void> {
  try {
    await buildProgram().parseAsync(process.argv);
  } catch (e) {
    const err = e as Error;
    process.stderr.write(`ast-agent: ${err.message}\n`);
    if (process.env.AST_DEBUG) process.stderr.write(`${err.stack}\n`);
    process.exitCode = 2;
  }
}

await main();
