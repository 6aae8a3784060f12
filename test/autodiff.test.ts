/** Every gradient rule against central finite differences of the same ONNX forward graph. */
import { describe, expect, it } from 'vitest';
import { attr } from '../src/onnx/graph.js';
import * as op from '../src/onnx/ops.js';
import { checkGradients, randomTensor } from './helpers/gradient-check.js';

const TOL = 2e-3;
const x4 = () => randomTensor([2, 3, 4, 5], 1);

describe('gradient rules (finite differences)', () => {
  const cases: [string, Parameters<typeof checkGradients>[0], Parameters<typeof checkGradients>[1]][] = [
    ['Add (broadcast)', (g, v) => op.add(g, v.a!, v.b!), { a: x4(), b: randomTensor([1, 3, 1, 1], 2) }],
    ['Sub (broadcast)', (g, v) => op.sub(g, v.a!, v.b!), { a: x4(), b: randomTensor([5], 2) }],
    ['Mul (broadcast)', (g, v) => op.mul(g, v.a!, v.b!), { a: x4(), b: randomTensor([3, 1, 5], 2) }],
    ['Div', (g, v) => op.div(g, v.a!, v.b!), { a: x4(), b: randomTensor([2, 3, 4, 5], 2, 0.3, 2) }],
    ['Exp', (g, v) => op.exp(g, v.a!), { a: randomTensor([2, 3, 4], 1, 0.5) }],
    ['Atan', (g, v) => op.atan(g, v.a!), { a: randomTensor([2, 3, 4], 1, 2) }],
    ['Sqrt', (g, v) => g.op('Sqrt', [v.a!]), { a: randomTensor([2, 3, 4], 1, 0.2, 2) }],
    ['Sigmoid', (g, v) => op.sigmoid(g, v.a!), { a: randomTensor([2, 3, 4], 1) }],
    ['Relu', (g, v) => op.relu(g, v.a!), { a: randomTensor([2, 3, 4], 3) }],
    ['LeakyRelu', (g, v) => op.leakyRelu(g, v.a!, 0.1), { a: randomTensor([2, 3, 4], 3) }],
    ['Clip', (g, v) => op.clip(g, v.a!, -0.5, 0.7), { a: randomTensor([2, 3, 4], 4) }],
    ['Concat', (g, v) => op.concat(g, [v.a!, v.b!], 1), { a: x4(), b: randomTensor([2, 2, 4, 5], 2) }],
    ['Split', (g, v) => { const [p, q] = op.split(g, v.a!, 1, [1, 2]); return op.concat(g, [q!, op.mul(g, p!, p!)], 1); }, { a: x4() }],
    ['Split (one part unused)', (g, v) => op.split(g, v.a!, 1, [1, 2])[1]!, { a: x4() }],
    ['Slice', (g, v) => op.slice(g, v.a!, [1, 1], [3, 4], [2, 3]), { a: x4() }],
    ['Gather (permutation)', (g, v) => op.gather(g, v.a!, op.ints(g, [2, 0, 1]), 1), { a: x4() }],
    ['ReduceSum', (g, v) => op.reduce(g, 'ReduceSum', v.a!, [1, 3], false), { a: x4() }],
    ['ReduceMean', (g, v) => op.reduce(g, 'ReduceMean', v.a!, [0, 2], true), { a: x4() }],
    ['ReduceMax', (g, v) => op.reduce(g, 'ReduceMax', v.a!, [2, 3], false), { a: x4() }],
    ['Reshape', (g, v) => op.reshape(g, v.a!, [6, 20]), { a: x4() }],
    ['Transpose', (g, v) => op.transpose(g, v.a!, [0, 2, 3, 1]), { a: x4() }],
    ['Unsqueeze/Squeeze', (g, v) => op.squeeze(g, op.unsqueeze(g, v.a!, [1]), [1]), { a: x4() }],
    ['Expand', (g, v) => op.expand(g, v.a!, op.ints(g, [2, 3, 4, 5])), { a: randomTensor([3, 1, 5], 1) }],
    ['MatMul (batched)', (g, v) => op.matmul(g, v.a!, v.b!), { a: randomTensor([2, 3, 4], 1), b: randomTensor([4, 5], 2) }],
    ['Where', (g, v) => g.op('Where', [g.op('Greater', [v.a!, op.scalar(g, 0)], {}, { dtypes: ['bool'] }), v.a!, v.b!]), { a: randomTensor([2, 3], 5), b: randomTensor([2, 3], 6) }],
    ['Pad (constant)', (g, v) => op.padSpatial(g, v.a!, 2, 'constant'), { a: x4() }],
    ['Pad (edge)', (g, v) => op.padSpatial(g, v.a!, 2, 'edge'), { a: x4() }],
    ['Pad (edge, asymmetric)', (g, v) => g.op('Pad', [v.a!, op.ints(g, [0, 0, 1, 3, 0, 0, 2, 0])], { mode: attr.string('edge') }), { a: x4() }],
    ['Conv 3×3 pad 1', (g, v) => op.conv(g, v.x!, v.w!, v.b!, { pads: [1, 1, 1, 1] }), { x: x4(), w: randomTensor([4, 3, 3, 3], 2, 0.3), b: randomTensor([4], 3) }],
    ['Conv 5×5 no pad', (g, v) => op.conv(g, v.x!, v.w!, null), { x: randomTensor([2, 2, 6, 7], 1), w: randomTensor([3, 2, 5, 5], 2, 0.2) }],
    ['Conv stride 2, pads', (g, v) => op.conv(g, v.x!, v.w!, v.b!, { pads: [1, 0, 1, 1], strides: [2, 2] }), { x: randomTensor([1, 2, 7, 6], 1), w: randomTensor([3, 2, 3, 3], 2, 0.3), b: randomTensor([3], 3) }],
    ['Conv dilation 2', (g, v) => op.conv(g, v.x!, v.w!, null, { pads: [2, 2, 2, 2], dilations: [2, 2] }), { x: randomTensor([1, 2, 6, 6], 1), w: randomTensor([2, 2, 3, 3], 2, 0.3) }],
    ['Conv grouped (depthwise)', (g, v) => op.conv(g, v.x!, v.w!, v.b!, { pads: [1, 1, 1, 1], group: 3 }), { x: x4(), w: randomTensor([3, 1, 3, 3], 2, 0.3), b: randomTensor([3], 3) }],
    ['Conv grouped (2 groups)', (g, v) => op.conv(g, v.x!, v.w!, null, { pads: [1, 1, 1, 1], group: 2 }), { x: randomTensor([1, 4, 4, 4], 1), w: randomTensor([6, 2, 3, 3], 2, 0.3) }],
  ];

  it.each(cases)('%s', async (_name, build, inputs) => {
    const r = await checkGradients(build, inputs);
    expect(r.coordinates).toBeGreaterThan(0);
    expect(r.worst).toBeLessThan(TOL);
  });

  // A step of 1e-2 on the weights moves some pre-activations across ReLU's kink, where central differences
  // are wrong by construction; 1e-3 avoids that at the price of float32 noise (hence 5e-3).
  it('a composition used by the teacher: edge pad → conv → ReLU → conv → soft clamp → exp', async () => {
    const r = await checkGradients(
      (g, v) => {
        const h = op.relu(g, op.conv(g, op.padSpatial(g, v.x!, 1, 'edge'), v.w1!, null));
        const a = op.conv(g, op.padSpatial(g, h, 1, 'edge'), v.w2!, null);
        const e = op.mul(g, op.atan(g, op.mul(g, a, op.scalar(g, 1 / 1.9))), op.scalar(g, 1.9 * 0.636));
        return op.mul(g, op.exp(g, e), v.x!);
      },
      { x: randomTensor([1, 2, 4, 4], 1), w1: randomTensor([3, 2, 3, 3], 2, 0.3), w2: randomTensor([2, 3, 3, 3], 3, 0.3) },
      { eps: 1e-3 },
    );
    expect(r.worst).toBeLessThan(5e-3);
  });
});
