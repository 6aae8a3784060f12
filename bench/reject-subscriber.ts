/**
 * The SCADA side of bench/reject-latency.bench.ts, in its own process as a real subscriber would be: an
 * MQTT 5 client subscribed at QoS 1 that prints `<seq> <arrival ms>` per message, the arrival read from
 * process.hrtime (CLOCK_MONOTONIC, the same clock in every process on the machine) before anything else.
 *
 *   tsx bench/reject-subscriber.ts <broker url> <topic>
 * Prints `ready` once subscribed.
 */
import { connectAsync } from 'mqtt';

const [url, topic] = process.argv.slice(2);
if (!url || !topic) throw new Error('usage: reject-subscriber.ts <broker url> <topic>');
const client = await connectAsync(url, { protocolVersion: 5, clean: true, reconnectPeriod: 0 });
client.on('message', (_topic, payload) => {
  const at = Number(process.hrtime.bigint()) / 1e6;
  const { seq } = JSON.parse(payload.toString('utf8')) as { seq: number };
  process.stdout.write(`${seq} ${at}\n`);
});
await client.subscribeAsync(topic, { qos: 1 });
process.stdout.write('ready\n');
process.on('SIGTERM', () => void client.endAsync().finally(() => process.exit(0)));
