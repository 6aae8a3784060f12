import { MqttSchema } from '../../src/config/agent-schema.js';
import type { MqttConfig } from '../../src/publish/mqtt-connection.js';

/** The `mqtt` config section as the agent would parse it (every default applied), metrics off. */
export function testMqttConfig(url: string, extra: Partial<MqttConfig> = {}): MqttConfig {
  return MqttSchema.parse({ url, metricsIntervalS: 0, ...extra });
}
