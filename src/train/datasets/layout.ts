/**
 * Dataset discovery: three folder layouts → one {@link Dataset} model the trainer and the evaluator share.
 *
 *   MVTec AD    <class>/train/good/*.png
 *               <class>/test/<type>/*.png                      (type "good" = good parts)
 *               <class>/ground_truth/<type>/<name>_mask.png    (defect types only)
 *   MVTec 3D-AD <class>/{train,validation,test}/<type>/rgb/*.png, xyz/*.tiff, gt/*.png
 *   folder      <dir>/*.png                                    good images, training only
 *               <dir>/good/*.png, <dir>/<defect>/*.png         labelled test images (optional)
 *               <dir>/ground_truth/<defect>/<name>_mask.png    (optional, as in MVTec AD)
 *
 * Only listing and cheap checks happen here (files exist, are readable, not 0 bytes; with `verify` also
 * their headers decode); pixels are decoded later by decode.ts, which names the file if one is corrupt.
 * Everything is sorted by code point, so sample order — and with it every seeded split — is the same on
 * every machine.
 */
import { stat } from 'node:fs/promises';
import { basename, extname, join, resolve } from 'node:path';
import { probeDepth, probeImage } from './decode.js';
import { DatasetError } from './errors.js';
import { checkReadableFile, compareCodePoints, isDir, listDir, mapLimit } from './fs-utils.js';

export type Label = 'good' | 'defect';
export type LayoutKind = 'mvtec' | 'mvtec3d' | 'folder';

export interface Sample {
  /** Unique in the dataset and stable: `<split>/<type>/<name>` (MVTec), `<name>` or `<type>/<name>` (folder). */
  id: string;
  /** RGB (or grey) image file. Absent only for depth-only MVTec 3D-AD trees. */
  image?: string;
  /** Depth file (float TIFF or 16-bit PNG). MVTec 3D-AD only. */
  depth?: string;
  /** Ground-truth mask, for defective samples of datasets that have masks. Good samples have none (all 0). */
  mask?: string;
  label: Label;
  /** The defect type folder; 'good' for good samples. */
  defectType: string;
}

export interface Dataset {
  /** The class folder the samples were found in (absolute). */
  root: string;
  /** The class name (the class folder's name). */
  name: string;
  layout: LayoutKind;
  /** Good images only. */
  train: Sample[];
  /** Held-out good images when the layout has them (MVTec 3D-AD `validation/`); else the trainer splits train. */
  validation?: Sample[];
  test: Sample[];
}

export interface LoadDatasetOptions {
  /** Class folder inside a multi-class root (`--class`). Without it the root itself may be a class folder. */
  className?: string;
  /** Default 'auto': MVTec 3D-AD when a type folder holds rgb/ or xyz/, MVTec AD when train/ or test/ exists, else folder. */
  layout?: 'auto' | LayoutKind;
  /**
   * Also read every file's header (sharp metadata / TIFF directory), so a corrupt file stops the run before
   * hours of feature extraction rather than in the middle. Default true; costs ~0.1–0.5 ms per file.
   */
  verify?: boolean;
}

export const IMAGE_EXTENSIONS = ['.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp'];
export const DEPTH_EXTENSIONS = ['.tiff', '.tif', '.png'];
const SPLITS = ['train', 'validation', 'test'] as const;
type Split = (typeof SPLITS)[number];

const hasExt = (name: string, exts: readonly string[]): boolean => exts.includes(extname(name).toLowerCase());
const stemOf = (name: string): string => name.slice(0, name.length - extname(name).length);
const bySampleId = (a: Sample, b: Sample): number => compareCodePoints(a.id, b.id);

/** Image files of `dir`, keyed by stem; two files with one stem (000.png, 000.jpg) are an error. */
async function filesByStem(dir: string, exts: readonly string[], what: string): Promise<Map<string, string>> {
  const { files } = await listDir(dir);
  const out = new Map<string, string>();
  for (const f of files.filter((n) => hasExt(n, exts))) {
    const stem = stemOf(f);
    const prev = out.get(stem);
    if (prev) throw new DatasetError('layout', join(dir, f), `${join(dir, f)} and ${prev} are two ${what} with the same name: keep one`);
    out.set(stem, join(dir, f));
  }
  return out;
}

async function nonEmptyImages(dir: string, what: string): Promise<Map<string, string>> {
  const images = await filesByStem(dir, IMAGE_EXTENSIONS, 'images');
  if (images.size === 0) {
    const { files } = await listDir(dir);
    const others = files.length ? ` (it holds ${files.length} other file(s), e.g. ${files[0]}; images are ${IMAGE_EXTENSIONS.join(' ')})` : '';
    throw new DatasetError('empty', dir, `${what} folder ${dir} holds no images${others}`);
  }
  return images;
}

const isClassRoot = async (dir: string): Promise<boolean> =>
  (await isDir(join(dir, 'train'))) || (await isDir(join(dir, 'test')));

/** Class folders (folders with train/ or test/) of a multi-class root, sorted. */
export async function listClasses(dir: string): Promise<string[]> {
  const { dirs } = await listDir(dir);
  const out: string[] = [];
  for (const d of dirs) if (await isClassRoot(join(dir, d))) out.push(d);
  return out;
}

async function resolveClassRoot(dir: string, opts: LoadDatasetOptions): Promise<string> {
  const root = resolve(dir);
  if (!(await isDir(root))) {
    const exists = (await stat(root).catch(() => null)) !== null;
    throw new DatasetError(exists ? 'layout' : 'missing', root, exists ? `dataset ${root} is a file, a folder was expected` : `dataset folder ${root} does not exist`);
  }
  if (opts.className !== undefined) {
    const name = opts.className;
    if (!name || name.includes('/') || name.includes('\\') || name === '.' || name === '..') {
      throw new DatasetError('invalid-option', root, `class name "${name}" must be a folder name inside ${root}`);
    }
    const classRoot = join(root, name);
    if (!(await isDir(classRoot))) {
      const classes = await listClasses(root);
      const known = classes.length ? `; classes here: ${classes.join(', ')}` : '';
      throw new DatasetError('missing', classRoot, `class folder ${classRoot} does not exist${known}`);
    }
    return classRoot;
  }
  if (opts.layout === 'folder' || (await isClassRoot(root))) return root;
  const classes = await listClasses(root);
  if (classes.length === 1) return join(root, classes[0]!);
  if (classes.length > 1) {
    throw new DatasetError('layout', root, `${root} holds ${classes.length} classes (${classes.join(', ')}): choose one with --class`);
  }
  return root; // a plain folder of images
}

async function detectLayout(root: string): Promise<LayoutKind> {
  let mvtec = false;
  for (const split of SPLITS) {
    const splitDir = join(root, split);
    if (!(await isDir(splitDir))) continue;
    mvtec = true;
    for (const type of (await listDir(splitDir)).dirs) {
      const typeDir = join(splitDir, type);
      if ((await isDir(join(typeDir, 'rgb'))) || (await isDir(join(typeDir, 'xyz')))) return 'mvtec3d';
    }
  }
  return mvtec ? 'mvtec' : 'folder';
}

/** train/ and validation/ may only hold good/: training from good parts only is the method's premise. */
async function checkGoodOnly(splitDir: string): Promise<void> {
  const { dirs } = await listDir(splitDir);
  const bad = dirs.filter((d) => d !== 'good');
  if (bad.length) {
    throw new DatasetError('layout', join(splitDir, bad[0]!), `${join(splitDir, bad[0]!)}: ${basename(splitDir)}/ may only hold good/ (training uses good parts only); move defective images to test/`);
  }
}

/**
 * Masks for the defective samples when `gtRoot` exists: ground_truth/<type>/<name>_mask.png (MVTec AD's
 * naming) or <name>.png. A dataset with a ground_truth folder promises masks, so a missing one is an
 * error rather than a silent hole in the pixel AUROC.
 */
async function attachMasks(samples: Sample[], gtRoot: string): Promise<void> {
  if (!(await isDir(gtRoot))) return;
  const cache = new Map<string, Map<string, string>>();
  for (const s of samples) {
    if (s.label === 'good') continue;
    const gtDir = join(gtRoot, s.defectType);
    let masks = cache.get(gtDir);
    if (!masks) {
      if (!(await isDir(gtDir))) {
        throw new DatasetError('missing-mask', gtDir, `mask folder ${gtDir} is missing: ${gtRoot} exists, so every defect type needs its masks`);
      }
      masks = await filesByStem(gtDir, IMAGE_EXTENSIONS, 'masks');
      cache.set(gtDir, masks);
    }
    const stem = stemOf(basename(s.image!));
    const mask = masks.get(`${stem}_mask`) ?? masks.get(stem);
    if (!mask) throw new DatasetError('missing-mask', join(gtDir, `${stem}_mask.png`), `mask ${join(gtDir, `${stem}_mask.png`)} for ${s.image} is missing`);
    s.mask = mask;
  }
}

/** Samples of test/ (or of a folder layout's sub-folders): one folder per type, "good" for good parts. */
async function typedSamples(dir: string, typeDirs: string[], idPrefix: string): Promise<Sample[]> {
  const out: Sample[] = [];
  for (const type of typeDirs) {
    const images = await nonEmptyImages(join(dir, type), type === 'good' ? 'good' : `defect type "${type}"`);
    for (const [stem, image] of images) {
      out.push({ id: `${idPrefix}${type}/${stem}`, image, label: type === 'good' ? 'good' : 'defect', defectType: type });
    }
  }
  return out;
}

async function loadMvtec(root: string): Promise<Omit<Dataset, 'root' | 'name' | 'layout'>> {
  const train: Sample[] = [];
  let validation: Sample[] | undefined;
  if (await isDir(join(root, 'train'))) {
    await checkGoodOnly(join(root, 'train'));
    const goodDir = join(root, 'train', 'good');
    if (!(await isDir(goodDir))) throw new DatasetError('missing', goodDir, `training folder ${goodDir} is missing`);
    for (const [stem, image] of await nonEmptyImages(goodDir, 'training')) train.push({ id: `train/good/${stem}`, image, label: 'good', defectType: 'good' });
  }
  if (await isDir(join(root, 'validation'))) {
    await checkGoodOnly(join(root, 'validation'));
    const goodDir = join(root, 'validation', 'good');
    validation = [];
    if (await isDir(goodDir)) {
      for (const [stem, image] of await nonEmptyImages(goodDir, 'validation')) validation.push({ id: `validation/good/${stem}`, image, label: 'good', defectType: 'good' });
    }
  }
  const test: Sample[] = [];
  const testDir = join(root, 'test');
  if (await isDir(testDir)) {
    const { dirs, files } = await listDir(testDir);
    if (dirs.length === 0) {
      const hint = files.some((f) => hasExt(f, IMAGE_EXTENSIONS)) ? ' (images must sit in one folder per type: test/good/, test/<defect>/)' : '';
      throw new DatasetError('empty', testDir, `test folder ${testDir} holds no type folders${hint}`);
    }
    test.push(...(await typedSamples(testDir, dirs, 'test/')));
    await attachMasks(test, join(root, 'ground_truth'));
  }
  return { train, validation, test };
}

/** One MVTec 3D-AD type folder: rgb/ and xyz/ (or depth/) paired by name, gt/ masks when expected. */
async function load3dType(typeDir: string, split: Split, type: string, masksExpected: boolean): Promise<Sample[]> {
  const rgbDir = join(typeDir, 'rgb');
  const depthDir = (await isDir(join(typeDir, 'xyz'))) ? join(typeDir, 'xyz') : join(typeDir, 'depth');
  const hasRgb = await isDir(rgbDir);
  const hasDepth = await isDir(depthDir);
  if (!hasRgb && !hasDepth) throw new DatasetError('missing', rgbDir, `${typeDir} needs rgb/ and/or xyz/ sub-folders (MVTec 3D-AD layout); ${rgbDir} is missing`);
  const rgb = hasRgb ? await nonEmptyImages(rgbDir, 'rgb') : null;
  const depth = hasDepth ? await filesByStem(depthDir, DEPTH_EXTENSIONS, 'depth maps') : null;
  if (depth && depth.size === 0) throw new DatasetError('empty', depthDir, `depth folder ${depthDir} holds no .tiff/.png files`);
  if (rgb && depth) {
    for (const stem of rgb.keys()) if (!depth.has(stem)) throw new DatasetError('missing', join(depthDir, `${stem}.tiff`), `depth map ${join(depthDir, `${stem}.tiff`)} for ${rgb.get(stem)} is missing`);
    for (const [stem, file] of depth) if (!rgb.has(stem)) throw new DatasetError('missing', join(rgbDir, `${stem}.png`), `image ${join(rgbDir, `${stem}.png`)} for ${file} is missing`);
  }
  const label: Label = type === 'good' ? 'good' : 'defect';
  let masks: Map<string, string> | null = null;
  if (label === 'defect' && masksExpected) {
    const gtDir = join(typeDir, 'gt');
    if (!(await isDir(gtDir))) throw new DatasetError('missing-mask', gtDir, `mask folder ${gtDir} is missing (other defect types have gt/ masks)`);
    masks = await filesByStem(gtDir, IMAGE_EXTENSIONS, 'masks');
  }
  const out: Sample[] = [];
  for (const stem of (rgb ?? depth)!.keys()) {
    const s: Sample = { id: `${split}/${type}/${stem}`, label, defectType: type };
    if (rgb) s.image = rgb.get(stem)!;
    if (depth) s.depth = depth.get(stem)!;
    if (masks) {
      const mask = masks.get(stem) ?? masks.get(`${stem}_mask`);
      if (!mask) throw new DatasetError('missing-mask', join(typeDir, 'gt', `${stem}.png`), `mask ${join(typeDir, 'gt', `${stem}.png`)} for ${s.image ?? s.depth} is missing`);
      s.mask = mask;
    }
    out.push(s);
  }
  return out;
}

async function loadMvtec3d(root: string): Promise<Omit<Dataset, 'root' | 'name' | 'layout'>> {
  const testDir = join(root, 'test');
  let masksExpected = false;
  if (await isDir(testDir)) {
    for (const t of (await listDir(testDir)).dirs) if (t !== 'good' && (await isDir(join(testDir, t, 'gt')))) masksExpected = true;
  }
  const result: Record<Split, Sample[] | undefined> = { train: undefined, validation: undefined, test: undefined };
  for (const split of SPLITS) {
    const splitDir = join(root, split);
    if (!(await isDir(splitDir))) continue;
    if (split !== 'test') await checkGoodOnly(splitDir);
    const { dirs } = await listDir(splitDir);
    if (dirs.length === 0) throw new DatasetError('empty', splitDir, `${split} folder ${splitDir} holds no type folders (good/, <defect>/)`);
    const samples: Sample[] = [];
    for (const type of dirs) samples.push(...(await load3dType(join(splitDir, type), split, type, masksExpected)));
    result[split] = samples;
  }
  return { train: result.train ?? [], validation: result.validation, test: result.test ?? [] };
}

async function loadFolder(root: string): Promise<Omit<Dataset, 'root' | 'name' | 'layout'>> {
  const loose = await filesByStem(root, IMAGE_EXTENSIONS, 'images');
  const train: Sample[] = [...loose].map(([stem, image]) => ({ id: stem, image, label: 'good' as const, defectType: 'good' }));
  const { dirs } = await listDir(root);
  const typeDirs = dirs.filter((d) => d !== 'ground_truth');
  const test = await typedSamples(root, typeDirs, '');
  await attachMasks(test, join(root, 'ground_truth'));
  if (train.length === 0 && test.length === 0) {
    throw new DatasetError('empty', root, `${root} holds no images (looked for ${IMAGE_EXTENSIONS.join(' ')} files, and good/ or <defect>/ folders)`);
  }
  return { train, test };
}

/** Every file a dataset lists. */
function filesOf(ds: Pick<Dataset, 'train' | 'validation' | 'test'>): { path: string; kind: 'image' | 'depth' }[] {
  const out: { path: string; kind: 'image' | 'depth' }[] = [];
  for (const s of [...ds.train, ...(ds.validation ?? []), ...ds.test]) {
    if (s.image) out.push({ path: s.image, kind: 'image' });
    if (s.depth) out.push({ path: s.depth, kind: 'depth' });
    if (s.mask) out.push({ path: s.mask, kind: 'image' });
  }
  return out;
}

/**
 * Finds the samples of a dataset folder. Throws a {@link DatasetError} naming the folder or file when the
 * folder is missing, an image folder is empty, a file is unreadable (or, with `verify`, undecodable), a
 * defect has no mask although the dataset has masks, or a class must be chosen. A layout with no training
 * or no test images is not an error here (a device may only have good parts, an evaluation only test
 * images): callers state what they need with {@link requireSplit}.
 */
export async function loadDataset(dir: string, opts: LoadDatasetOptions = {}): Promise<Dataset> {
  const root = await resolveClassRoot(dir, opts);
  const layout = !opts.layout || opts.layout === 'auto' ? await detectLayout(root) : opts.layout;
  if (layout !== 'folder' && !(await isClassRoot(root)) && !(await isDir(join(root, 'validation')))) {
    throw new DatasetError('layout', root, `${root} has no train/ or test/ folder, so it is not in the ${layout === 'mvtec' ? 'MVTec AD' : 'MVTec 3D-AD'} layout`);
  }
  const found = layout === 'mvtec' ? await loadMvtec(root) : layout === 'mvtec3d' ? await loadMvtec3d(root) : await loadFolder(root);
  const ds: Dataset = {
    root,
    name: basename(root),
    layout,
    train: found.train.sort(bySampleId),
    test: found.test.sort(bySampleId),
  };
  if (found.validation) ds.validation = found.validation.sort(bySampleId);
  if (ds.train.length + ds.test.length + (ds.validation?.length ?? 0) === 0) {
    throw new DatasetError('empty', root, `dataset ${root} holds no images`);
  }
  // Cheap checks on every file first (all of them, so a 0-byte file deep in test/ is found before training).
  const files = filesOf(ds);
  await mapLimit(files, 16, (f) => checkReadableFile(f.path));
  if (opts.verify ?? true) await mapLimit(files, 8, (f) => (f.kind === 'depth' ? probeDepth(f.path) : probeImage(f.path)));
  return ds;
}

/** Throws a DatasetError naming the folder that should have held them when a split the caller needs is empty. */
export function requireSplit(ds: Dataset, split: 'train' | 'test'): void {
  if (ds[split].length > 0) return;
  const where = ds.layout === 'folder'
    ? split === 'train' ? `${ds.root}/*.png` : `${ds.root}/good/ and ${ds.root}/<defect>/`
    : split === 'train' ? join(ds.root, 'train', 'good') : join(ds.root, 'test');
  throw new DatasetError('missing', where, `dataset ${ds.root} has no ${split === 'train' ? 'training' : 'test'} images: expected them in ${where}`);
}
