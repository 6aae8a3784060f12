/**
 * Depth preparation for AST's depth and RGB-D ("combi") modes: pure functions on row-major typed arrays.
 *
 * What the authors' code does (marco-rudolph/AST: preprocessing.py, utils.py, eval.py, config.py):
 *
 * 1. **z channel** — the last channel of the MVTec 3D-AD xyz TIFF (metres, 0 = missing), at the native
 *    resolution: gap filling and background removal run before any resize.
 * 2. **Gap filling**, 3 passes (`n_fills`). In each pass every pixel that is exactly 0 becomes
 *    sum(3×3 window) / count(window > 0), where the windows are read from the previous pass (Jacobi style,
 *    not in place). If no value in the window is positive, the pixel stays 0. Quirk: the window starts at
 *    y−1 / x−1, which is −1 on row 0 / column 0, and Python slicing makes that window EMPTY. So zeros on
 *    the first row or column are never filled. On the last row or column the window is just truncated.
 * 3. **Background**: not a least-squares plane. It is a bilinear surface through four corner values, each
 *    the mean of the positive pixels of a 2×2 corner block, placed at pixels (0,0), (H−1,0), (0,W−1) and
 *    (H−1,W−1): linear in the row (np.linspace) along the left and right columns, then linear in the column.
 * 4. **Foreground** = |background − z| > 7e-3 (`bg_thresh`, metres) and z ≠ 0. Not dilated at this stage.
 * 5. **Normalisation** (dataset loader, at native resolution, with the undilated mask):
 *    m = Σ fg·z / Σ fg; z ← fg·z + (1 − fg)·m; depth = (z − m)·100. The background becomes exactly 0.
 * 6. **Resize**: depth and mask are resized to depth_len × depth_len (img_len / 4 = 192 for 768 input)
 *    with F.interpolate bilinear, align_corners=False and no antialias. The mask is then binarised (> 0).
 * 7. **Dilation** (eval/train, `dilate_size` = 8) at depth_len: scipy binary_dilation with an 8×8 square
 *    of ones, zero outside the image. For an even size SciPy's anchoring gives
 *    out[y,x] = max in[y+dy, x+dx] for dy, dx ∈ [−3, +4]: a pixel grows 4 px up and left, 3 px down and
 *    right.
 * 8. **Feature-resolution mask**: bilinear (align_corners=False) resize of the dilated mask to map_len
 *    (depth_len / 8). It is NOT binarised, so the values are fractional. For factor 8 each cell is the mean
 *    of the 2×2 central pixels of its 8×8 block. Losses and maps are multiplied by it.
 * 9. **Model input**: PixelUnshuffle(8) of the [1, depth_len, depth_len] depth map gives 64 channels.
 *    'depth' mode feeds only those 64 channels. 'combi' feeds concat([features, depth64]) (features
 *    first). 'RGB' mode uses no depth and an all-ones mask.
 *
 * Numerics: everything runs in float64 and is stored as float32 at the end. The authors hold the arrays in
 * float32 (about 1 ulp of difference), and the project's PyTorch fixture computes in float64.
 * Deviations (documented): non-finite inputs (NaN/±Inf) count as gaps (0). MVTec marks gaps with 0, so
 * this never fires on its data. The reference would give NaN, where we throw a typed {@link DepthError}:
 * a corner block with no positive value, an empty foreground, an all-invalid map.
 */

export type DepthErrorCode =
  | 'invalid-size'
  | 'length-mismatch'
  | 'not-divisible'
  | 'invalid-option'
  | 'no-valid-depth'
  | 'empty-corner'
  | 'degenerate-plane'
  | 'no-foreground';

export class DepthError extends Error {
  readonly code: DepthErrorCode;
  constructor(code: DepthErrorCode, message: string) {
    super(message);
    this.name = 'DepthError';
    this.code = code;
  }
}

/** A depth (z) map or any real-valued map, row-major [H, W]. */
export type DepthArray = Float32Array | Float64Array;
/** A mask, row-major [H, W]: binary (Uint8Array 0/1) or fractional (Float32Array in [0, 1]). */
export type MaskArray = Uint8Array | Float32Array | Float64Array;

/** Plane z = a·x + b·y + c with x = column index, y = row index (pixel units). */
export interface PlaneCoefficients {
  a: number;
  b: number;
  c: number;
}

/** Means of the positive values of the four corner blocks (image terms: top = row 0, left = column 0). */
export interface CornerMeans {
  topLeft: number;
  topRight: number;
  bottomLeft: number;
  bottomRight: number;
}

// ------------------------------------------------------------------------------------------------
// validation helpers
// ------------------------------------------------------------------------------------------------

function checkPositiveInt(value: number, name: string, code: DepthErrorCode = 'invalid-size'): void {
  if (!Number.isInteger(value) || value <= 0) throw new DepthError(code, `${name} must be a positive integer, got ${value}`);
}

function checkMap(data: ArrayLike<number>, H: number, W: number, what: string): void {
  checkPositiveInt(H, `${what} height`);
  checkPositiveInt(W, `${what} width`);
  if (data.length !== H * W) {
    throw new DepthError('length-mismatch', `${what} has ${data.length} values, expected H·W = ${H}·${W} = ${H * W}`);
  }
}

function checkDivisible(H: number, W: number, r: number, what: string): void {
  checkPositiveInt(r, `${what} factor`, 'invalid-option');
  if (H % r !== 0 || W % r !== 0) {
    throw new DepthError('not-divisible', `${what}: H = ${H} and W = ${W} must both be divisible by ${r}`);
  }
}

/** Copy into float64; non-finite values become 0 (= missing). */
function sanitize(depth: ArrayLike<number>): Float64Array {
  const out = new Float64Array(depth.length);
  for (let i = 0; i < depth.length; i++) {
    const v = depth[i]!;
    out[i] = Number.isFinite(v) ? v : 0;
  }
  return out;
}

function countValid(z: ArrayLike<number>): number {
  let n = 0;
  for (let i = 0; i < z.length; i++) if (z[i]! > 0) n++;
  return n;
}

// ------------------------------------------------------------------------------------------------
// 1. gap filling
// ------------------------------------------------------------------------------------------------

export interface FillGapsOptions {
  /**
   * Reproduce the reference's slicing quirk (default true): zeros on row 0 or column 0 are never filled.
   * false: they get a window clipped to the image, like every other border.
   */
  borderQuirk?: boolean;
}

function fillOnce(z: Float64Array, H: number, W: number, borderQuirk: boolean): Float64Array {
  const out = new Float64Array(z);
  for (let y = 0; y < H; y++) {
    if (borderQuirk && y === 0) continue;
    const y0 = Math.max(y - 1, 0);
    const y1 = Math.min(y + 1, H - 1);
    for (let x = 0; x < W; x++) {
      if (z[y * W + x] !== 0) continue;
      if (borderQuirk && x === 0) continue;
      const x0 = Math.max(x - 1, 0);
      const x1 = Math.min(x + 1, W - 1);
      let sum = 0;
      let n = 0;
      for (let yy = y0; yy <= y1; yy++) {
        for (let xx = x0; xx <= x1; xx++) {
          const v = z[yy * W + xx]!;
          sum += v; // the reference sums the whole window (zeros add nothing) …
          if (v > 0) n++; // … and divides by the count of positive values
        }
      }
      if (n > 0) out[y * W + x] = sum / n;
    }
  }
  return out;
}

function fillGaps64(z: Float64Array, H: number, W: number, iterations: number, borderQuirk: boolean): Float64Array {
  let cur = z;
  for (let i = 0; i < iterations; i++) cur = fillOnce(cur, H, W, borderQuirk);
  return cur;
}

/**
 * Fill invalid pixels (0 or non-finite) from their valid 3×3 neighbours, `iterations` passes (reference: 3).
 * Returns a new array. Pixels with no positive neighbour stay 0. Throws when no pixel is valid.
 */
export function fillGaps(
  depth: DepthArray,
  H: number,
  W: number,
  iterations = 3,
  options: FillGapsOptions = {},
): Float32Array {
  checkMap(depth, H, W, 'depth map');
  if (!Number.isInteger(iterations) || iterations < 0) {
    throw new DepthError('invalid-option', `fill iterations must be a non-negative integer, got ${iterations}`);
  }
  const z = sanitize(depth);
  if (countValid(z) === 0) {
    throw new DepthError('no-valid-depth', `depth map ${H}×${W} has no valid (positive, finite) pixel: nothing to fill from`);
  }
  return Float32Array.from(fillGaps64(z, H, W, iterations, options.borderQuirk ?? true));
}

// ------------------------------------------------------------------------------------------------
// 2. background: the reference's bilinear corner surface, or a least-squares plane
// ------------------------------------------------------------------------------------------------

function checkCornerSize(cornerSize: number, H: number, W: number): void {
  checkPositiveInt(cornerSize, 'corner size', 'invalid-option');
  if (cornerSize > H || cornerSize > W) {
    throw new DepthError('invalid-option', `corner size ${cornerSize} does not fit a ${H}×${W} map`);
  }
}

/**
 * Per corner, the sum of the cornerSize×cornerSize block divided by the count of its positive values
 * (reference: 2×2, `get_corner_points`). Throws when a block has no positive value (reference: NaN).
 */
export function cornerMeans(depth: DepthArray, H: number, W: number, cornerSize = 2): CornerMeans {
  checkMap(depth, H, W, 'depth map');
  checkCornerSize(cornerSize, H, W);
  const z = sanitize(depth);
  const block = (name: string, r0: number, c0: number): number => {
    let sum = 0;
    let n = 0;
    for (let y = r0; y < r0 + cornerSize; y++) {
      for (let x = c0; x < c0 + cornerSize; x++) {
        const v = z[y * W + x]!;
        sum += v;
        if (v > 0) n++;
      }
    }
    if (n === 0) {
      throw new DepthError(
        'empty-corner',
        `the ${name} ${cornerSize}×${cornerSize} corner block has no valid depth: the background cannot be estimated`,
      );
    }
    return sum / n;
  };
  return {
    topLeft: block('top-left', 0, 0),
    topRight: block('top-right', 0, W - cornerSize),
    bottomLeft: block('bottom-left', H - cornerSize, 0),
    bottomRight: block('bottom-right', H - cornerSize, W - cornerSize),
  };
}

/** NumPy's linspace(start, stop, n) in float64, term by term (arange·step + start, last = stop). */
function linspace(start: number, stop: number, n: number): Float64Array {
  const out = new Float64Array(n);
  if (n === 1) {
    out[0] = start;
    return out;
  }
  const step = (stop - start) / (n - 1);
  for (let i = 0; i < n; i++) out[i] = i * step + start;
  out[n - 1] = stop;
  return out;
}

/**
 * The reference background (`remove_background`): bilinear surface through the corner means placed at
 * the corner pixels. Left/right column profiles run linearly over rows, then the surface runs linearly
 * over columns between them. Returns [H, W] float64.
 */
export function cornerBackground(depth: DepthArray, H: number, W: number, cornerSize = 2): Float64Array {
  return bilinearFromCorners(cornerMeans(depth, H, W, cornerSize), H, W);
}

function bilinearFromCorners(m: CornerMeans, H: number, W: number): Float64Array {
  const left = linspace(m.topLeft, m.bottomLeft, H);
  const right = linspace(m.topRight, m.bottomRight, H);
  const wl = linspace(1, 0, W);
  const wr = linspace(0, 1, W);
  const out = new Float64Array(H * W);
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) out[y * W + x] = left[y]! * wl[x]! + right[y]! * wr[x]!;
  }
  return out;
}

/**
 * Least-squares plane z = a·x + b·y + c (x = column, y = row) through the valid (positive, finite) pixels
 * of the four cornerSize×cornerSize corner patches. Solves the 3×3 normal equations in float64, on
 * centred coordinates for conditioning. Not what the reference does (it uses {@link cornerBackground}); an
 * option for tilted scenes where a true plane is wanted.
 */
export function fitBackgroundPlane(depth: DepthArray, H: number, W: number, cornerSize = 2): PlaneCoefficients {
  checkMap(depth, H, W, 'depth map');
  checkCornerSize(cornerSize, H, W);
  const xs: number[] = [];
  const ys: number[] = [];
  const zs: number[] = [];
  const seen = new Set<number>(); // patches overlap when 2·cornerSize > H or W
  for (const [r0, c0] of [[0, 0], [0, W - cornerSize], [H - cornerSize, 0], [H - cornerSize, W - cornerSize]] as const) {
    for (let y = r0; y < r0 + cornerSize; y++) {
      for (let x = c0; x < c0 + cornerSize; x++) {
        const i = y * W + x;
        const v = depth[i]!;
        if (seen.has(i) || !(Number.isFinite(v) && v > 0)) continue;
        seen.add(i);
        xs.push(x);
        ys.push(y);
        zs.push(v);
      }
    }
  }
  const n = zs.length;
  if (n < 3) {
    throw new DepthError('degenerate-plane', `only ${n} valid corner pixels (corner size ${cornerSize}): a plane needs at least 3`);
  }
  let mx = 0;
  let my = 0;
  let mz = 0;
  for (let i = 0; i < n; i++) {
    mx += xs[i]!;
    my += ys[i]!;
    mz += zs[i]!;
  }
  mx /= n;
  my /= n;
  mz /= n;
  // normal equations [Σx² Σxy Σx; Σxy Σy² Σy; Σx Σy n]·[a b c]ᵀ = [Σxz Σyz Σz] on centred x, y, z
  const A = [
    [0, 0, 0],
    [0, 0, 0],
    [0, 0, n],
  ];
  const rhs = [0, 0, 0];
  for (let i = 0; i < n; i++) {
    const dx = xs[i]! - mx;
    const dy = ys[i]! - my;
    const dz = zs[i]! - mz;
    A[0]![0]! += dx * dx;
    A[0]![1]! += dx * dy;
    A[0]![2]! += dx;
    A[1]![1]! += dy * dy;
    A[1]![2]! += dy;
    rhs[0]! += dx * dz;
    rhs[1]! += dy * dz;
    rhs[2]! += dz;
  }
  A[1]![0] = A[0]![1]!;
  A[2]![0] = A[0]![2]!;
  A[2]![1] = A[1]![2]!;
  const scale = Math.max(A[0]![0]!, A[1]![1]!, n);
  const sol = solve3(A, rhs, scale);
  if (!sol) {
    throw new DepthError('degenerate-plane', `the ${n} valid corner pixels are collinear: the background plane is undetermined`);
  }
  const [a, b, cc] = sol;
  return { a, b, c: mz + cc - a * mx - b * my };
}

/** Gaussian elimination with partial pivoting; null when (numerically) singular. */
function solve3(A: number[][], b: number[], scale: number): [number, number, number] | null {
  const M = A.map((row, i) => [...row, b[i]!]);
  for (let col = 0; col < 3; col++) {
    let piv = col;
    for (let r = col + 1; r < 3; r++) if (Math.abs(M[r]![col]!) > Math.abs(M[piv]![col]!)) piv = r;
    if (Math.abs(M[piv]![col]!) <= 1e-12 * scale) return null;
    [M[col], M[piv]] = [M[piv]!, M[col]!];
    for (let r = col + 1; r < 3; r++) {
      const f = M[r]![col]! / M[col]![col]!;
      for (let k = col; k < 4; k++) M[r]![k]! -= f * M[col]![k]!;
    }
  }
  const x = [0, 0, 0];
  for (let r = 2; r >= 0; r--) {
    let s = M[r]![3]!;
    for (let k = r + 1; k < 3; k++) s -= M[r]![k]! * x[k]!;
    x[r] = s / M[r]![r]!;
  }
  return [x[0]!, x[1]!, x[2]!];
}

/** The plane evaluated at every pixel, [H, W] float64. */
export function planeSurface(plane: PlaneCoefficients, H: number, W: number): Float64Array {
  checkPositiveInt(H, 'height');
  checkPositiveInt(W, 'width');
  const out = new Float64Array(H * W);
  for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) out[y * W + x] = plane.a * x + plane.b * y + plane.c;
  return out;
}

// ------------------------------------------------------------------------------------------------
// 3. foreground mask and dilation
// ------------------------------------------------------------------------------------------------

/**
 * Binary dilation with a size×size square of ones, zero outside the image. The anchoring is SciPy's
 * (binary_dilation with np.ones([size, size])): out[y,x] = max in[y+dy, x+dx] for
 * dy, dx ∈ [−⌊(size−1)/2⌋, ⌊size/2⌋]. That is centred for odd sizes and [−3, +4] for size 8.
 * size ≤ 1 returns a copy. Separable (row pass, then column pass).
 */
export function dilateMask(mask: MaskArray, H: number, W: number, size = 8): Uint8Array {
  checkMap(mask, H, W, 'mask');
  if (!Number.isInteger(size) || size < 0) throw new DepthError('invalid-option', `dilation size must be a non-negative integer, got ${size}`);
  const src = new Uint8Array(H * W);
  for (let i = 0; i < src.length; i++) src[i] = mask[i]! > 0 ? 1 : 0;
  if (size <= 1) return src;
  const lo = -Math.floor((size - 1) / 2);
  const hi = Math.floor(size / 2);
  const rows = new Uint8Array(H * W);
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      const a = Math.max(0, x + lo);
      const b = Math.min(W - 1, x + hi);
      let v = 0;
      for (let xx = a; xx <= b && !v; xx++) v = src[y * W + xx]!;
      rows[y * W + x] = v;
    }
  }
  const out = new Uint8Array(H * W);
  for (let y = 0; y < H; y++) {
    const a = Math.max(0, y + lo);
    const b = Math.min(H - 1, y + hi);
    for (let x = 0; x < W; x++) {
      let v = 0;
      for (let yy = a; yy <= b && !v; yy++) v = rows[yy * W + x]!;
      out[y * W + x] = v;
    }
  }
  return out;
}

/**
 * Foreground = |z − background| > threshold on valid pixels (z > 0), then dilated by a `dilation`×`dilation`
 * square ({@link dilateMask}; 0 or 1 = none). `background` is a plane or a per-pixel surface [H, W]
 * (e.g. {@link cornerBackground}). The reference thresholds at native resolution without dilation and
 * dilates later, after the resize to depth_len. {@link prepareDepth} follows that order.
 */
export function foregroundMask(
  depth: DepthArray,
  H: number,
  W: number,
  background: PlaneCoefficients | DepthArray,
  threshold = 7e-3,
  dilation = 8,
): Uint8Array {
  checkMap(depth, H, W, 'depth map');
  if (!(threshold >= 0) || !Number.isFinite(threshold)) throw new DepthError('invalid-option', `threshold must be a finite number ≥ 0, got ${threshold}`);
  let bg: ArrayLike<number>;
  if ('a' in background) bg = planeSurface(background, H, W);
  else {
    checkMap(background, H, W, 'background surface');
    bg = background;
  }
  const fg = new Uint8Array(H * W);
  for (let i = 0; i < fg.length; i++) {
    const v = depth[i]!;
    if (!Number.isFinite(v) || v === 0) continue;
    if (Math.abs(bg[i]! - v) > threshold) fg[i] = 1;
  }
  return dilation > 1 ? dilateMask(fg, H, W, dilation) : fg;
}

// ------------------------------------------------------------------------------------------------
// 4. resizing and mask downsampling
// ------------------------------------------------------------------------------------------------

/** Source taps of 1-D linear interpolation with half-pixel centres (PyTorch align_corners=False). */
function linearTaps(inSize: number, outSize: number): { i0: Int32Array; i1: Int32Array; w1: Float64Array } {
  const scale = inSize / outSize;
  const i0 = new Int32Array(outSize);
  const i1 = new Int32Array(outSize);
  const w1 = new Float64Array(outSize);
  for (let d = 0; d < outSize; d++) {
    let src = scale * (d + 0.5) - 0.5;
    if (src < 0) src = 0;
    const a = Math.floor(src);
    i0[d] = a;
    i1[d] = a < inSize - 1 ? a + 1 : a;
    w1[d] = src - a;
  }
  return { i0, i1, w1 };
}

function resize64(src: ArrayLike<number>, H: number, W: number, outH: number, outW: number): Float64Array {
  const ty = linearTaps(H, outH);
  const tx = linearTaps(W, outW);
  const out = new Float64Array(outH * outW);
  for (let y = 0; y < outH; y++) {
    const r0 = ty.i0[y]! * W;
    const r1 = ty.i1[y]! * W;
    const h1 = ty.w1[y]!;
    const h0 = 1 - h1;
    for (let x = 0; x < outW; x++) {
      const c0 = tx.i0[x]!;
      const c1 = tx.i1[x]!;
      const w1 = tx.w1[x]!;
      const w0 = 1 - w1;
      out[y * outW + x] = h0 * (w0 * src[r0 + c0]! + w1 * src[r0 + c1]!) + h1 * (w0 * src[r1 + c0]! + w1 * src[r1 + c1]!);
    }
  }
  return out;
}

/**
 * Bilinear resize like PyTorch's F.interpolate(mode='bilinear', align_corners=False, antialias=False)
 * with an explicit output size: src = (in/out)·(dst + 0.5) − 0.5, clamped at 0, taps clamped to the edge.
 */
export function resizeBilinear(src: DepthArray | MaskArray, H: number, W: number, outH: number, outW: number): Float32Array {
  checkMap(src, H, W, 'resize input');
  checkPositiveInt(outH, 'output height');
  checkPositiveInt(outW, 'output width');
  return Float32Array.from(resize64(src, H, W, outH, outW));
}

export interface DownsampleMaskOptions {
  /** Binarise the result (> 0 → 1). The reference does NOT (default false): the feature mask is fractional. */
  binarize?: boolean;
}

/**
 * Mask to feature resolution [H/factor, W/factor], as the reference does (`downsampling(fg, map_len,
 * bin=False)`): bilinear, align_corners=False, no antialias. For an even factor each cell is the mean of
 * the 2×2 pixels at the centre of its factor×factor block. For an odd factor it is the centre pixel.
 */
export function downsampleMask(mask: MaskArray, H: number, W: number, factor: number, options: DownsampleMaskOptions = {}): Float32Array {
  checkMap(mask, H, W, 'mask');
  checkDivisible(H, W, factor, 'mask downsampling');
  const out = resizeBilinear(mask, H, W, H / factor, W / factor);
  if (options.binarize) for (let i = 0; i < out.length; i++) out[i] = out[i]! > 0 ? 1 : 0;
  return out;
}

// ------------------------------------------------------------------------------------------------
// 5. pixel unshuffle
// ------------------------------------------------------------------------------------------------

/**
 * PyTorch's pixel_unshuffle: [C, H, W] → [C·r², H/r, W/r] with
 * out[c·r² + i·r + j, y, x] = in[c, y·r + i, x·r + j]. For C = 1 this is exactly ONNX SpaceToDepth
 * (blocksize r), whose channel order is (i·r + j)·C + c.
 */
export function pixelUnshuffle(x: DepthArray, C: number, H: number, W: number, r: number): Float32Array {
  checkPositiveInt(C, 'channel count');
  checkPositiveInt(H, 'height');
  checkPositiveInt(W, 'width');
  if (x.length !== C * H * W) {
    throw new DepthError('length-mismatch', `tensor has ${x.length} values, expected C·H·W = ${C}·${H}·${W} = ${C * H * W}`);
  }
  checkDivisible(H, W, r, 'pixel unshuffle');
  const h = H / r;
  const w = W / r;
  const out = new Float32Array(C * H * W);
  let o = 0;
  for (let c = 0; c < C; c++) {
    for (let i = 0; i < r; i++) {
      for (let j = 0; j < r; j++) {
        for (let y = 0; y < h; y++) {
          const row = c * H * W + (y * r + i) * W + j;
          for (let xx = 0; xx < w; xx++) out[o++] = x[row + xx * r]!;
        }
      }
    }
  }
  return out;
}

// ------------------------------------------------------------------------------------------------
// 6. normalisation and the whole chain
// ------------------------------------------------------------------------------------------------

/**
 * The reference normalisation: m = mean of z over the foreground; background pixels take m; then
 * (z − m)·scale. The background therefore becomes 0. Throws when the foreground is empty
 * (reference: 0/0 = NaN).
 */
export function normalizeDepth(
  depth: DepthArray,
  foreground: MaskArray,
  H: number,
  W: number,
  scale = 100,
): { depth: Float32Array; foregroundMean: number } {
  checkMap(depth, H, W, 'depth map');
  checkMap(foreground, H, W, 'foreground mask');
  const { out, mean } = normalize64(sanitize(depth), foreground, scale);
  return { depth: Float32Array.from(out), foregroundMean: mean };
}

function normalize64(z: Float64Array, fg: ArrayLike<number>, scale: number): { out: Float64Array; mean: number } {
  let s = 0;
  let n = 0;
  for (let i = 0; i < z.length; i++) {
    s += fg[i]! * z[i]!;
    n += fg[i]!;
  }
  if (!(n > 0)) {
    throw new DepthError('no-foreground', 'no foreground pixel: nothing stands out of the background by more than the threshold');
  }
  const mean = s / n;
  const out = new Float64Array(z.length);
  for (let i = 0; i < z.length; i++) {
    const f = fg[i]!;
    out[i] = (f * z[i]! + (1 - f) * mean - mean) * scale;
  }
  return { out, mean };
}

export interface PrepareDepthOptions {
  /** Gap-filling passes (reference `n_fills` = 3). */
  fillIterations?: number;
  /** Foreground threshold on |z − background|, metres (reference `bg_thresh` = 7e-3). */
  threshold?: number;
  /** Dilation square size at the depth-map resolution (reference `dilate_size` = 8; 0 = none). */
  dilation?: number;
  /** Corner block size for the background (reference 2). */
  cornerSize?: number;
  /** 'corners' = the reference's bilinear corner surface (default); 'plane' = least-squares corner plane. */
  background?: 'corners' | 'plane';
  /**
   * Depth pixels per feature cell = pixel-unshuffle factor (reference `depth_downscale` = 8, giving 64
   * channels). Feature resolution = depth-map size / featureStride.
   */
  featureStride?: number;
  /**
   * Depth-map size fed to the unshuffle, after the bilinear resize (reference: depth_len = image size / 4,
   * 192 for 768 input, i.e. feature map size × featureStride). Default: the input size (no resize).
   */
  outputSize?: { height: number; width: number };
  /** Multiplier after centring on the foreground mean (reference 100: metres → centimetres). */
  depthScale?: number;
  /** See {@link FillGapsOptions.borderQuirk} (default true = reference). */
  borderQuirk?: boolean;
}

export interface PreparedDepth {
  /** Depth-map size (after resize). */
  height: number;
  width: number;
  /** Feature resolution = depth-map size / featureStride. */
  featureHeight: number;
  featureWidth: number;
  /** featureStride² (64 for the reference). */
  depthChannels: number;
  /** Normalised depth [1, height, width]. */
  depth: Float32Array;
  /** pixel_unshuffle(depth) [featureStride², featureHeight, featureWidth]: the model's depth input. */
  unshuffled: Float32Array;
  /** Foreground at the depth-map resolution: resized, binarised (> 0) and dilated [height, width]. */
  mask: Uint8Array;
  /** Fractional foreground at feature resolution [featureHeight, featureWidth]: the loss/map weight. */
  featureMask: Float32Array;
  /** Gap-filled z at the input resolution [H, W] (metres). */
  filled: Float32Array;
  /** Undilated foreground at the input resolution [H, W] (what the reference stores next to z). */
  foreground: Uint8Array;
  /** Mean z of the foreground (metres): the centre of the normalisation. */
  foregroundMean: number;
}

/**
 * The whole reference chain: raw z [H, W] (metres, 0 or non-finite = missing) → gap filling → corner
 * background → foreground → normalisation → bilinear resize of depth and mask (mask binarised) → dilation →
 * fractional feature-resolution mask, plus the pixel-unshuffled depth.
 */
export function prepareDepth(rawZ: DepthArray, H: number, W: number, options: PrepareDepthOptions = {}): PreparedDepth {
  checkMap(rawZ, H, W, 'depth map');
  const iterations = options.fillIterations ?? 3;
  const threshold = options.threshold ?? 7e-3;
  const dilation = options.dilation ?? 8;
  const cornerSize = options.cornerSize ?? 2;
  const r = options.featureStride ?? 8;
  const scale = options.depthScale ?? 100;
  const outH = options.outputSize?.height ?? H;
  const outW = options.outputSize?.width ?? W;
  if (!Number.isInteger(iterations) || iterations < 0) {
    throw new DepthError('invalid-option', `fillIterations must be a non-negative integer, got ${iterations}`);
  }
  if (!Number.isFinite(scale) || scale === 0) throw new DepthError('invalid-option', `depthScale must be finite and non-zero, got ${scale}`);
  checkPositiveInt(outH, 'output height');
  checkPositiveInt(outW, 'output width');
  checkDivisible(outH, outW, r, `depth map ${outH}×${outW} for feature stride ${r}`);

  const z = sanitize(rawZ);
  if (countValid(z) === 0) {
    throw new DepthError('no-valid-depth', `depth map ${H}×${W} has no valid (positive, finite) pixel: is the depth camera delivering data?`);
  }
  const filled = fillGaps64(z, H, W, iterations, options.borderQuirk ?? true);
  const background =
    (options.background ?? 'corners') === 'corners'
      ? bilinearFromCorners(cornerMeans(filled, H, W, cornerSize), H, W)
      : planeSurface(fitBackgroundPlane(filled, H, W, cornerSize), H, W);
  const fg = foregroundMask(filled, H, W, background, threshold, 0);
  const { out: norm, mean } = normalize64(filled, fg, scale);

  const depth = Float32Array.from(resize64(norm, H, W, outH, outW));
  const fgResized = resize64(fg, H, W, outH, outW);
  const mask = dilateMask(fgResized, outH, outW, dilation);
  const featureMask = downsampleMask(mask, outH, outW, r);
  return {
    height: outH,
    width: outW,
    featureHeight: outH / r,
    featureWidth: outW / r,
    depthChannels: r * r,
    depth,
    unshuffled: pixelUnshuffle(depth, 1, outH, outW, r),
    mask,
    featureMask,
    filled: Float32Array.from(filled),
    foreground: fg,
    foregroundMean: mean,
  };
}
