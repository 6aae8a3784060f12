/**
 * zod schemas for the AST model's hyper-parameters and presets. The bundle manifest embeds these, so a
 * bundle records exactly which network it carries (widths, blocks, kernels, clamp, feature layer, input).
 */
import { z } from 'zod';

export const ModeSchema = z.enum(['rgb', 'depth', 'rgbd']);
export type Mode = z.infer<typeof ModeSchema>;

export const TeacherParamsSchema = z
  .object({
    /** Coupling blocks of the normalizing flow (paper: 4). */
    blocks: z.int().min(1).max(32),
    /** Hidden channels of each coupling subnet (paper: 64). */
    hidden: z.int().min(1),
    /** Kernel size of each block's subnets (paper: 3, 3, 3, 5). */
    kernelSizes: z.array(z.int().min(1).refine((k) => k % 2 === 1, 'kernel sizes must be odd')),
    /** Soft clamp of the log-scales (paper: 1.9). */
    clamp: z.number().positive(),
  })
  .refine((t) => t.kernelSizes.length === t.blocks, {
    message: 'teacher.kernelSizes needs one entry per block',
    path: ['kernelSizes'],
  });
export type TeacherParams = z.infer<typeof TeacherParamsSchema>;

export const StudentParamsSchema = z.object({
  /** Channels of the student's hidden layers (paper: 1024). */
  width: z.int().min(1),
  /** Residual blocks (paper: 4). */
  residualBlocks: z.int().min(0).max(64),
  /** LeakyReLU negative slope (PyTorch default 0.01). */
  leakySlope: z.number().min(0),
  /** BatchNorm epsilon (PyTorch default 1e-5). */
  bnEps: z.number().positive(),
});
export type StudentParams = z.infer<typeof StudentParamsSchema>;

export const ScoringParamsSchema = z.object({
  /** Which image score the verdict uses: the map's maximum (paper) or its mean. */
  aggregation: z.enum(['max', 'mean']),
  /** Gaussian sigma (input pixels) applied to the upsampled map; 0 disables smoothing. */
  smoothingSigma: z.number().min(0),
});
export type ScoringParams = z.infer<typeof ScoringParamsSchema>;

export const DepthParamsSchema = z.object({
  /** Pixel-unshuffle factor of the depth map (paper: 8 → 64 channels). */
  unshuffle: z.int().min(1),
  /** Foreground: |z − background| above this (paper: 7e-3, metres in MVTec 3D-AD). */
  foregroundThreshold: z.number().positive(),
  /** Side of the square dilation of the foreground mask, in depth-map pixels (paper: 8). */
  dilation: z.int().min(0),
  /**
   * Background surface: 'corners' is the reference's bilinear surface through the corner-block means;
   * 'plane' a least-squares plane through the corner blocks.
   */
  background: z.enum(['corners', 'plane']),
  /** Side of the square corner blocks the background is estimated from (reference: 2). */
  cornerSize: z.int().min(1),
  /** Depth is scaled by this after subtracting the foreground mean (reference: 100). */
  depthScale: z.number().positive(),
  /** Gap-filling passes (paper: 3). */
  gapFillIterations: z.int().min(0),
});
export type DepthParams = z.infer<typeof DepthParamsSchema>;

export const ModelParamsSchema = z.object({
  mode: ModeSchema,
  /** Channels of the backbone features F (0 in `depth` mode). */
  featureChannels: z.int().min(0),
  /** Channels of the pixel-unshuffled depth (0 in `rgb` mode). */
  depthChannels: z.int().min(0),
  /** Channels of the 2-D sin/cos positional encoding (paper: 32). */
  posChannels: z.int().min(0).refine((d) => d % 4 === 0, 'posChannels must be a multiple of 4'),
  teacher: TeacherParamsSchema,
  student: StudentParamsSchema,
  scoring: ScoringParamsSchema,
  depth: DepthParamsSchema.optional(),
});
export type ModelParams = z.infer<typeof ModelParamsSchema>;

export const PresetNameSchema = z.enum(['paper', 'edge']);
export type PresetName = z.infer<typeof PresetNameSchema>;

export interface TrainingDefaults {
  teacherEpochs: number;
  studentEpochs: number;
  batchSize: number;
  teacherLr: number;
  studentLr: number;
  weightDecay: number;
}

export interface Preset {
  /** Square input side in pixels. */
  inputSize: number;
  /** Mirrored context around frames before the backbone (see InputSpec.contextPad). */
  contextPad: number;
  training: TrainingDefaults;
  backbone: { name: string; layers: string[]; channels: number; stride: number };
  teacher: TeacherParams;
  student: StudentParams;
  scoring: ScoringParams;
  depth: DepthParams;
  posChannels: number;
}

const PAPER_DEPTH: DepthParams = {
  unshuffle: 8,
  foregroundThreshold: 7e-3,
  dilation: 8,
  background: 'corners',
  cornerSize: 2,
  depthScale: 100,
  gapFillIterations: 3,
};

export const PRESETS: Record<PresetName, Preset> = {
  /** The paper's defaults: EfficientNet-B5 block 35 at 768² → 304 × 24 × 24, student width 1024. */
  paper: {
    inputSize: 768,
    contextPad: 0,
    training: { teacherEpochs: 72, studentEpochs: 72, batchSize: 8, teacherLr: 2e-4, studentLr: 2e-4, weightDecay: 1e-5 },
    backbone: { name: 'efficientnet-b5', layers: ['block35'], channels: 304, stride: 32 },
    teacher: { blocks: 4, hidden: 64, kernelSizes: [3, 3, 3, 5], clamp: 1.9 },
    student: { width: 1024, residualBlocks: 4, leakySlope: 0.01, bnEps: 1e-5 },
    scoring: { aggregation: 'max', smoothingSigma: 4 },
    depth: PAPER_DEPTH,
    posChannels: 32,
  },
  /**
   * Sized for a 2-core CPU: the default MobileNetV2 backbone's linear block outputs at strides 8 and 16
   * (48 + 136 channels, the coarser one upsampled: 184 × 32 × 32 on 256² input — linear features like the
   * paper's EfficientNet block, without the exact zeros of ReLU6 layers that let a flow's likelihood
   * diverge), and a width-256 student with 2 residual blocks (~2.4 M parameters instead of ~81 M).
   */
  edge: {
    inputSize: 256,
    contextPad: 16,
    // A short schedule: the flow converges ~5× faster at lr 1e-3; the student is unstable there.
    training: { teacherEpochs: 8, studentEpochs: 8, batchSize: 8, teacherLr: 1e-3, studentLr: 2e-4, weightDecay: 1e-5 },
    backbone: { name: 'mobilenetv2-1.4-nsfwjs', layers: ['expanded_conv_5/add', 'expanded_conv_12/add'], channels: 184, stride: 8 },
    teacher: { blocks: 4, hidden: 64, kernelSizes: [3, 3, 3, 5], clamp: 1.9 },
    student: { width: 256, residualBlocks: 2, leakySlope: 0.01, bnEps: 1e-5 },
    scoring: { aggregation: 'max', smoothingSigma: 4 },
    depth: PAPER_DEPTH,
    posChannels: 32,
  },
};

/** Hyper-parameters of a preset for a mode (depth modes add the 64 unshuffled depth channels). */
export function modelParamsFor(preset: PresetName, mode: Mode, featureChannels?: number): ModelParams {
  const p = PRESETS[preset];
  const depthChannels = mode === 'rgb' ? 0 : p.depth.unshuffle ** 2;
  return {
    mode,
    featureChannels: mode === 'depth' ? 0 : (featureChannels ?? p.backbone.channels),
    depthChannels,
    posChannels: p.posChannels,
    teacher: p.teacher,
    student: p.student,
    scoring: p.scoring,
    ...(mode === 'rgb' ? {} : { depth: p.depth }),
  };
}
