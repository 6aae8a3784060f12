/** The error `p` rejects with, checked to be an instance of `type` (a test failure when it resolves or rejects otherwise). */
import { expect } from 'vitest';

export async function rejectionOf<E extends Error>(p: Promise<unknown>, type: abstract new (...args: never[]) => E): Promise<E> {
  const e = await p.then(
    () => null,
    (x: unknown) => x,
  );
  expect(e, `expected a ${type.name}`).toBeInstanceOf(type);
  return e as E;
}
