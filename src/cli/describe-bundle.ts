/** `bundle inspect`: a bundle's manifest in words, for the engineer at the line. */
import type { BundleManifest } from '../config/bundle-manifest.js';

function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(2)} MiB`;
}

export function describeBundle(m: BundleManifest, source: string): string {
  const t = m.model.teacher;
  const s = m.model.student;
  const lines = [
    `Bundle ${m.id} version ${m.version} (${source})`,
    `  Preset ${m.preset}, mode ${m.model.mode}: ${
      m.model.mode === 'rgb' ? 'colour only' : m.model.mode === 'depth' ? 'depth only' : 'colour and depth'
    }.`,
    `  Input: ${m.input.width}×${m.input.height} RGB frames (uint8, NHWC), normalised with mean [${m.input.mean.join(', ')}] and std [${m.input.std.join(', ')}]${
      m.input.contextPad ? `; ${m.input.contextPad} px of mirrored context added before the backbone` : ''
    }.`,
    m.backbone
      ? `  Backbone: ${m.backbone.name} — ${m.backbone.description}; outputs ${m.backbone.outputs
          .map((o) => `${o.name} (${o.channels} channels, stride ${o.stride}${o.layer ? `, layer ${o.layer}` : ''})`)
          .join(', ')}.`
      : '  Backbone: none — a feature-level bundle; it scores feature maps (ast-agent score), not camera frames.',
    `  Features: ${m.model.featureChannels} channels${m.model.depthChannels ? ` + ${m.model.depthChannels} pixel-unshuffled depth channels` : ''} at ${m.featureSize.height}×${m.featureSize.width}, positional encoding ${m.model.posChannels} channels.`,
    `  Teacher: normalizing flow of ${t.blocks} coupling blocks, subnets with ${t.hidden} hidden channels, kernels ${t.kernelSizes.join(', ')}, soft clamp ${t.clamp}.`,
    `  Student: conv net of width ${s.width} with ${s.residualBlocks} residual blocks (LeakyReLU ${s.leakySlope}, BatchNorm eps ${s.bnEps}, folded for inference).`,
    `  Scoring: image score = ${m.model.scoring.aggregation} of the anomaly map; full-size maps ${
      m.model.scoring.smoothingSigma > 0 ? `smoothed with a Gaussian of sigma ${m.model.scoring.smoothingSigma} px` : 'not smoothed'
    }.`,
  ];
  if (m.model.depth) {
    const d = m.model.depth;
    lines.push(
      `  Depth: gaps filled ${d.gapFillIterations}×, background from ${d.cornerSize}×${d.cornerSize} corner blocks (${d.background}), foreground where |z − background| > ${d.foregroundThreshold}, dilated by ${d.dilation} px, scaled ×${d.depthScale}, unshuffled by ${d.unshuffle}.`,
    );
  }
  const c = m.calibration;
  lines.push(
    c
      ? `  Calibration (${c.method}${c.targetFalseRejectRate !== undefined ? `, target false-reject rate ${c.targetFalseRejectRate}` : ''}, ${c.samples} good samples): reject at raw score ≥ ${c.threshold.toPrecision(6)}; good scores ${c.goodMean.toPrecision(6)} ± ${c.goodStd.toPrecision(4)}; normalised score 0.5 = threshold.`
      : '  Calibration: none — verdicts need a threshold (train/calibrate this bundle or set one at run time).',
  );
  const g = m.golden;
  const goldenInputs = g ? [g.file ? 'frames' : '', g.depthFile ? 'prepared depth and mask' : ''].filter(Boolean).join(' + ') : '';
  lines.push(
    g
      ? `  Golden samples: ${g.count} (${goldenInputs}) with their expected scores, re-scored on the device after an update (tolerance ${g.tolerance}).`
      : '  Golden samples: none — as an update, an RGB model is refused and a depth model runs on probation only.',
  );
  lines.push(`  Provenance: ${m.provenance.source} by ${m.provenance.tool} at ${m.provenance.createdAt}${m.provenance.from ? ` from ${m.provenance.from}` : ''}.`);
  const metrics = Object.entries(m.metrics);
  if (metrics.length) lines.push(`  Metrics: ${metrics.map(([k, v]) => `${k} ${v}`).join(', ')}.`);
  lines.push(`  Graphs: head ${m.graphs.head}${m.graphs.detector ? `, fused detector ${m.graphs.detector}` : ''}; weights ${m.weights}.`);
  lines.push('  Files:');
  for (const [name, f] of Object.entries(m.files)) lines.push(`    ${name}  ${mib(f.bytes)}  sha256 ${f.sha256}`);
  return lines.join('\n');
}
