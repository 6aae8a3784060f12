/**
 * The station's MQTT topics, in one place: everything lives under `<prefix>/<station>/` (the payloads are
 * described in src/config/mqtt-payloads.ts).
 */

export interface StationTopics {
  /** `<prefix>/<station>` */
  readonly base: string;
  readonly status: string;
  readonly result: string;
  readonly reject: string;
  readonly rejectMissed: string;
  readonly heatmap: string;
  readonly heatmapMeta: string;
  readonly metrics: string;
  /** Part-present messages (external trigger mode). */
  readonly trigger: string;
  /** The subscription that receives every command request: `<base>/cmd/+`. */
  readonly commandFilter: string;
  command(name: string): string;
  commandResponse(name: string): string;
  /** The command name of a request topic, or null when the topic is not one. */
  commandName(topic: string): string | null;
}

export function stationTopics(prefix: string, station: string): StationTopics {
  const base = `${prefix.replace(/\/+$/, '')}/${station}`;
  const cmd = `${base}/cmd/`;
  return {
    base,
    status: `${base}/status`,
    result: `${base}/result`,
    reject: `${base}/reject`,
    rejectMissed: `${base}/reject/missed`,
    heatmap: `${base}/heatmap`,
    heatmapMeta: `${base}/heatmap/meta`,
    metrics: `${base}/metrics`,
    trigger: `${base}/trigger`,
    commandFilter: `${cmd}+`,
    command: (name) => `${cmd}${name}`,
    commandResponse: (name) => `${cmd}${name}/response`,
    commandName: (topic) => {
      if (!topic.startsWith(cmd)) return null;
      const name = topic.slice(cmd.length);
      return name.length > 0 && !name.includes('/') ? name : null;
    },
  };
}

/** MQTT topic-filter matching (`+` one level, `#` the rest); `$`-topics only match filters that name them. */
export function topicMatches(filter: string, topic: string): boolean {
  const f = filter.split('/');
  const t = topic.split('/');
  if (topic.startsWith('$') && (f[0] === '+' || f[0] === '#')) return false;
  for (let i = 0; i < f.length; i++) {
    if (f[i] === '#') return true;
    if (i >= t.length) return false;
    if (f[i] !== '+' && f[i] !== t[i]) return false;
  }
  return f.length === t.length;
}
