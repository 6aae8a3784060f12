/**
 * Settings changed at run time (by MQTT command) that must survive a restart: today the decision
 * threshold. Stored as JSON in the state folder, replaced atomically; a file that does not parse is
 * reported and ignored (the calibrated threshold applies), never half-read.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { writeFileAtomically } from '../storage/atomic-file.js';

export const ThresholdSettingSchema = z.union([
  z.strictObject({ normalized: z.number().gt(0).lt(1) }),
  /** Raw scores belong to one model: a raw threshold is dropped when another model is installed. */
  z.strictObject({ raw: z.number().nonnegative(), modelId: z.string(), modelVersion: z.string() }),
]);
export type ThresholdSetting = z.infer<typeof ThresholdSettingSchema>;

export const RuntimeSettingsSchema = z.strictObject({
  threshold: ThresholdSettingSchema.nullable().default(null),
});
export type RuntimeSettings = z.infer<typeof RuntimeSettingsSchema>;

export class RuntimeSettingsStore {
  private constructor(private readonly file: string, private current: RuntimeSettings) {}

  /** `problem` says why an existing file was ignored. */
  static async open(stateDir: string): Promise<{ store: RuntimeSettingsStore; problem: string | null }> {
    const file = join(stateDir, 'settings.json');
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { store: new RuntimeSettingsStore(file, RuntimeSettingsSchema.parse({})), problem: null };
      throw e;
    }
    let parsed;
    try {
      parsed = RuntimeSettingsSchema.safeParse(JSON.parse(text));
    } catch (e) {
      return { store: new RuntimeSettingsStore(file, RuntimeSettingsSchema.parse({})), problem: `${file}: not JSON (${(e as Error).message})` };
    }
    if (!parsed.success) {
      const why = parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
      return { store: new RuntimeSettingsStore(file, RuntimeSettingsSchema.parse({})), problem: `${file}: ${why}` };
    }
    return { store: new RuntimeSettingsStore(file, parsed.data), problem: null };
  }

  get settings(): RuntimeSettings {
    return this.current;
  }

  async update(patch: Partial<RuntimeSettings>): Promise<void> {
    const next = RuntimeSettingsSchema.parse({ ...this.current, ...patch });
    await writeFileAtomically(this.file, JSON.stringify(next, null, 2) + '\n');
    this.current = next;
  }
}
