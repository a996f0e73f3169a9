/**
 * The Node flags /usr/bin/slotflip (systemd/packaging/slotflip.sh) starts `slotflip COMMAND` with:
 * from the `case` line whose patterns name COMMAND (`daemon|install|update) exec "$node" FLAGS ...`),
 * else, with `fallback`, the generic last `exec "$node" FLAGS ...` line; undefined when neither is
 * there. The benches run the built CLI with these, as a device does.
 */
import { readFileSync } from 'node:fs';

export function launcherFlags(launcher: string, command: string, fallback = false): string[] | undefined {
  const text = readFileSync(launcher, 'utf8');
  for (const line of text.split('\n')) {
    const m = /^\s*([a-z|-]+)\) exec "\$node" (.*?)"\$lib\/dist\/daemon\/cli\.js" "\$@"/.exec(line);
    if (m && m[1]!.split('|').includes(command)) return m[2]!.split(' ').filter(Boolean);
  }
  if (!fallback) return undefined;
  const g = /^exec "\$node" (.*?)"\$lib\/dist\/daemon\/cli\.js" "\$@"$/m.exec(text);
  return g ? g[1]!.split(' ').filter(Boolean) : undefined;
}
