/**
 * Heat-map overlays for the report: the input image beside the same image (in grey, so the part's own
 * colours do not compete with the colour map) with the anomaly map alpha-blended in the inferno colour map,
 * the ground-truth mask outlined in cyan (a hue inferno never uses), a caption and a colour bar.
 * Pixel work is done here on plain arrays; sharp only resizes the photo and rasterises the caption SVG.
 */
import sharp from 'sharp';
import { COLORS, FONT, escapeXml, formatNumber } from './charts.js';
import { EvaluationError } from './metrics.js';

export interface RgbImage {
  /** Row-major pixels, `channels` bytes each (RGB, or one grey byte). */
  rgb: Uint8Array;
  width: number;
  height: number;
  channels?: 1 | 3;
}

export interface ScoreMap {
  data: Float32Array;
  width: number;
  height: number;
}

/**
 * Matplotlib's inferno (perceptually uniform: lightness rises monotonically, readable in greyscale and
 * for colour-blind readers) from Matt Zucker's degree-6 polynomial fit (CC0), sampled into 256 entries.
 */
const INFERNO_COEFFS: readonly (readonly [number, number, number])[] = [
  [0.0002189403691192265, 0.001651004631001012, -0.01948089843709184],
  [0.1065134194856116, 0.5639564367884091, 3.932712388889277],
  [11.60249308247187, -3.972853965665698, -15.9423941062914],
  [-41.70399613139459, 17.43639888205313, 44.35414519872813],
  [77.162935699427, -33.40235894210092, -81.80730925738993],
  [-71.31942824499214, 32.62606426397723, 73.20951985803202],
  [25.13112622477341, -12.24266895238567, -23.07032500287172],
];

/** 256 × RGB lookup table of the inferno colour map (index 0 = low, 255 = high). */
export const INFERNO_LUT: Uint8Array = (() => {
  const lut = new Uint8Array(256 * 3);
  for (let i = 0; i < 256; i++) {
    const t = i / 255;
    for (let c = 0; c < 3; c++) {
      let v = 0;
      for (let k = INFERNO_COEFFS.length - 1; k >= 0; k--) v = v * t + INFERNO_COEFFS[k]![c]!;
      lut[i * 3 + c] = Math.round(Math.min(1, Math.max(0, v)) * 255);
    }
  }
  return lut;
})();

/** Bilinear resize of a float map (half-pixel centres, edge clamped — PyTorch's align_corners=False). */
export function resizeBilinear(src: ArrayLike<number>, width: number, height: number, outWidth: number, outHeight: number): Float32Array {
  const out = new Float32Array(outWidth * outHeight);
  const sx = width / outWidth;
  const sy = height / outHeight;
  for (let y = 0; y < outHeight; y++) {
    const fy = Math.min(height - 1, Math.max(0, (y + 0.5) * sy - 0.5));
    const y0 = Math.floor(fy);
    const y1 = Math.min(height - 1, y0 + 1);
    const wy = fy - y0;
    for (let x = 0; x < outWidth; x++) {
      const fx = Math.min(width - 1, Math.max(0, (x + 0.5) * sx - 0.5));
      const x0 = Math.floor(fx);
      const x1 = Math.min(width - 1, x0 + 1);
      const wx = fx - x0;
      const top = src[y0 * width + x0]! * (1 - wx) + src[y0 * width + x1]! * wx;
      const bottom = src[y1 * width + x0]! * (1 - wx) + src[y1 * width + x1]! * wx;
      out[y * outWidth + x] = top * (1 - wy) + bottom * wy;
    }
  }
  return out;
}

/** Nearest-neighbour resize of a byte mask (non-zero = defect), returned as 0/1. */
export function resizeNearest(src: ArrayLike<number>, width: number, height: number, outWidth: number, outHeight: number): Uint8Array {
  const out = new Uint8Array(outWidth * outHeight);
  for (let y = 0; y < outHeight; y++) {
    const sy = Math.min(height - 1, Math.floor(((y + 0.5) * height) / outHeight));
    for (let x = 0; x < outWidth; x++) {
      const sx = Math.min(width - 1, Math.floor(((x + 0.5) * width) / outWidth));
      out[y * outWidth + x] = src[sy * width + sx] !== 0 ? 1 : 0;
    }
  }
  return out;
}

/**
 * A ring `thickness` px wide just OUTSIDE a 0/1 mask (grown by 4-neighbour steps), so the heat under a thin
 * defect such as a scratch stays visible inside the outline.
 */
export function maskOutline(mask: Uint8Array, width: number, height: number, thickness = 2): Uint8Array {
  const region = new Uint8Array(mask);
  const outline = new Uint8Array(width * height);
  for (let pass = 0; pass < thickness; pass++) {
    const grown: number[] = [];
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        const i = y * width + x;
        if (region[i]) continue;
        if ((x > 0 && region[i - 1]) || (x < width - 1 && region[i + 1]) || (y > 0 && region[i - width]) || (y < height - 1 && region[i + width])) {
          grown.push(i);
        }
      }
    }
    for (const i of grown) region[i] = outline[i] = 1;
  }
  return outline;
}

export interface OverlayOptions {
  image?: RgbImage;
  map: ScoreMap;
  /** Ground truth at the map's size (non-zero = defect). */
  mask?: ArrayLike<number>;
  /** Colour-map range, shared by all overlays of a report so they compare. */
  range: [number, number];
  /** Caption lines above the panels (first line bold). */
  caption: string[];
  /** Marked on the colour bar when inside the range (e.g. the threshold of a max-score detector). */
  mark?: { value: number; label: string };
}

const PAD = 10;
const HEADER = 50;
const FOOTER = 64;
const MIN_WIDTH = 540;
const OUTLINE: readonly [number, number, number] = [0, 255, 255];

/** Display size: small images (Fashion-MNIST's 28²) are enlarged by an integer factor, large ones shrunk to 512. */
export function displaySize(width: number, height: number): { width: number; height: number; upscale: boolean } {
  const long = Math.max(width, height);
  if (long < 256) {
    const s = Math.max(1, Math.floor(256 / long));
    return { width: width * s, height: height * s, upscale: true };
  }
  if (long > 512) {
    const r = 512 / long;
    return { width: Math.max(1, Math.round(width * r)), height: Math.max(1, Math.round(height * r)), upscale: false };
  }
  return { width, height, upscale: false };
}

async function displayImage(image: RgbImage, width: number, height: number, upscale: boolean): Promise<Uint8Array> {
  const channels = image.channels ?? 3;
  if (image.rgb.length !== image.width * image.height * channels) {
    throw new EvaluationError(`image has ${image.rgb.length} bytes, expected ${image.width}×${image.height}×${channels}`, 'image');
  }
  const out = await sharp(image.rgb, { raw: { width: image.width, height: image.height, channels } })
    .resize(width, height, { kernel: upscale ? 'nearest' : 'lanczos3', fit: 'fill' })
    .toColourspace('srgb')
    .removeAlpha()
    .raw()
    .toBuffer({ resolveWithObject: true });
  if (out.info.channels === 3) return new Uint8Array(out.data.buffer, out.data.byteOffset, out.data.byteLength);
  // sharp keeps one channel for grey input: expand to RGB
  const rgb = new Uint8Array(width * height * 3);
  for (let i = 0; i < width * height; i++) rgb[i * 3] = rgb[i * 3 + 1] = rgb[i * 3 + 2] = out.data[i * out.info.channels]!;
  return rgb;
}

/** Renders one overlay panel as PNG bytes; returns its size too. */
export async function renderOverlayPng(o: OverlayOptions): Promise<{ png: Buffer; width: number; height: number }> {
  const { map } = o;
  if (map.data.length !== map.width * map.height) throw new EvaluationError(`map has ${map.data.length} values, expected ${map.width}×${map.height}`, 'map');
  if (o.mask && o.mask.length !== map.data.length) throw new EvaluationError(`mask has ${o.mask.length} pixels, the map ${map.data.length}`, 'mask');
  const base = o.image ?? map;
  const d = displaySize(base.width, base.height);
  const photo = o.image ? await displayImage(o.image, d.width, d.height, d.upscale) : null;
  const heat = resizeBilinear(map.data, map.width, map.height, d.width, d.height);
  const outline = o.mask ? maskOutline(resizeNearest(o.mask, map.width, map.height, d.width, d.height), d.width, d.height, 2) : null;

  const panels = photo ? 2 : 1;
  const width = Math.max(MIN_WIDTH, panels * d.width + (panels + 1) * PAD);
  const height = HEADER + d.height + FOOTER;
  const canvas = new Uint8Array(width * height * 3).fill(255);
  const left0 = Math.floor((width - (panels * d.width + (panels - 1) * PAD)) / 2);
  const heatLeft = photo ? left0 + d.width + PAD : left0;

  const blit = (pixels: Uint8Array, left: number): void => {
    for (let y = 0; y < d.height; y++) canvas.set(pixels.subarray(y * d.width * 3, (y + 1) * d.width * 3), ((HEADER + y) * width + left) * 3);
  };
  if (photo) blit(photo, left0);

  // Heat panel: grey photo (if any) blended with the colour-mapped map; opacity grows with the value so
  // quiet regions keep showing the part and hot spots dominate.
  const [lo, hi] = o.range;
  const span = hi > lo ? hi - lo : 1;
  const blended = new Uint8Array(d.width * d.height * 3);
  for (let i = 0; i < d.width * d.height; i++) {
    const t = Math.min(1, Math.max(0, (heat[i]! - lo) / span));
    const c = Math.round(t * 255) * 3;
    if (outline && outline[i]) {
      blended.set(OUTLINE, i * 3);
      continue;
    }
    if (photo) {
      const grey = 0.299 * photo[i * 3]! + 0.587 * photo[i * 3 + 1]! + 0.114 * photo[i * 3 + 2]!;
      const a = 0.25 + 0.6 * t;
      for (let k = 0; k < 3; k++) blended[i * 3 + k] = Math.round((1 - a) * grey + a * INFERNO_LUT[c + k]!);
    } else {
      blended.set(INFERNO_LUT.subarray(c, c + 3), i * 3);
    }
  }
  blit(blended, heatLeft);

  // Colour bar under the heat panel.
  const barTop = HEADER + d.height + 8;
  const barHeight = 12;
  for (let x = 0; x < d.width; x++) {
    const c = Math.round((x / Math.max(1, d.width - 1)) * 255) * 3;
    for (let y = barTop; y < barTop + barHeight; y++) canvas.set(INFERNO_LUT.subarray(c, c + 3), (y * width + heatLeft + x) * 3);
  }

  const svg: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="${FONT}" font-size="12" fill="${COLORS.axis}">`,
  ];
  o.caption.slice(0, 2).forEach((line, k) => {
    svg.push(`<text x="${PAD}" y="${18 + k * 18}" ${k === 0 ? 'font-weight="bold" font-size="13"' : ''}>${escapeXml(line)}</text>`);
  });
  const labelY = barTop + barHeight + 14;
  svg.push(`<rect x="${heatLeft}" y="${barTop}" width="${d.width}" height="${barHeight}" fill="none" stroke="${COLORS.axis}" stroke-width="0.8"/>`);
  svg.push(`<text x="${heatLeft}" y="${labelY}">${escapeXml(formatNumber(lo))}</text>`);
  svg.push(`<text x="${heatLeft + d.width}" y="${labelY}" text-anchor="end">${escapeXml(formatNumber(hi))}</text>`);
  if (o.mark && o.mark.value > lo && o.mark.value < hi) {
    const x = heatLeft + ((o.mark.value - lo) / span) * d.width;
    svg.push(`<line x1="${x.toFixed(1)}" y1="${barTop - 3}" x2="${x.toFixed(1)}" y2="${barTop + barHeight + 3}" stroke="${COLORS.threshold}" stroke-width="2"/>`);
    svg.push(`<text x="${x.toFixed(1)}" y="${labelY}" text-anchor="middle" fill="${COLORS.threshold}">${escapeXml(o.mark.label)}</text>`);
  }
  if (photo) {
    svg.push(`<text x="${left0 + d.width / 2}" y="${labelY - 6}" text-anchor="middle" fill="#666666">input</text>`);
  }
  if (outline) {
    svg.push(`<text x="${heatLeft}" y="${labelY + 16}" fill="#007A7A" font-size="11">cyan outline: ground-truth mask</text>`);
  }
  svg.push('</svg>');

  const png = await sharp(canvas, { raw: { width, height, channels: 3 } })
    .composite([{ input: Buffer.from(svg.join('')), top: 0, left: 0 }])
    .png({ compressionLevel: 9 })
    .toBuffer();
  return { png, width, height };
}
