/**
 * `slotflip repo serve DIR [--port P] [--bind ADDR] [--max-concurrent N]`: serve DIR/repository
 * (metadata and payloads, nothing else: keys live in DIR/keys and are never reachable) over HTTP
 * with Range, ETag/If-Range and HEAD (manifests/serve.ts), so devices resume downloads. Access log:
 * one pino JSON line per request on stdout. SIGTERM/SIGINT: stop accepting, let responses in flight
 * finish for up to 10 s, exit 0.
 *
 * Kept apart from repo.ts (the signing tools) so an addition here never touches their options.
 */
import { stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { pino } from 'pino';
import { SlotflipError } from '../../hal/errors.js';
import { DEFAULT_MAX_CONCURRENT, serveRepository } from '../../manifests/serve.js';
import { packageVersion } from '../command-support.js';
import type { CommandIO } from './command.js';
import { nodeUtil } from '../../hal/builtins.js';
const { parseArgs } = nodeUtil;

export const REPO_SERVE_HELP = [
  '  serve DIR [--port P] [--bind ADDR] [--max-concurrent N]',
  '        serve DIR/repository (metadata/ and targets/; never DIR/keys) over HTTP with Range,',
  '        ETag/If-Range and HEAD, so devices resume downloads. Default 127.0.0.1:8080; --port 0 picks',
  `        a free port. At most N responses at a time (default ${DEFAULT_MAX_CONCURRENT}; more get 503 + Retry-After).`,
  '        Logs one JSON line per request on stdout; the first line ("listening") carries the URL.',
  '        Devices: trust.sources [{type:"http",url:"http://HOST:P/"}] or payloadBaseUrls',
  '        ["http://HOST:P/targets/"]. Stops cleanly on SIGTERM. For TLS, put nginx or a CDN in front.',
].join('\n');

const GRACE_MS = 10_000;

function intOption(name: string, v: string | undefined, dflt: number, min: number, max: number): number {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!/^\d+$/.test(v) || n < min || n > max) throw new SlotflipError('DAEMON_USAGE', `repo serve: --${name} ${JSON.stringify(v)}: expected an integer from ${min} to ${max}`);
  return n;
}

/** Runs until SIGTERM/SIGINT; resolves with the exit code. */
export async function runRepoServe(argv: string[], io: CommandIO): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: { port: { type: 'string' }, bind: { type: 'string' }, 'max-concurrent': { type: 'string' } },
    });
  } catch (cause) {
    throw new SlotflipError('DAEMON_USAGE', `repo serve: ${(cause as Error).message}; see slotflip repo --help`, { cause });
  }
  const { values, positionals } = parsed;
  if (positionals.length !== 1) throw new SlotflipError('DAEMON_USAGE', 'repo serve: expected exactly one DIR (the directory `slotflip repo init` made); see slotflip repo --help');
  const port = intOption('port', values.port, 8080, 0, 65535);
  const maxConcurrent = intOption('max-concurrent', values['max-concurrent'], DEFAULT_MAX_CONCURRENT, 1, 100_000);
  const dir = resolve(positionals[0]!);
  const root = join(dir, 'repository');
  const meta = await stat(join(root, 'metadata')).catch(() => undefined);
  if (!meta?.isDirectory()) throw new SlotflipError('MANIFEST_REPO_INVALID', `repo serve: ${root}/metadata is not a directory; give the directory \`slotflip repo init\` created`, { details: { path: root } });
  const host = values.bind ?? '127.0.0.1';

  const log = pino({ base: { module: 'manifests.serve', version: packageVersion() } }, pino.destination({ dest: 1, sync: true }));
  const server = await serveRepository(root, {
    host,
    port,
    maxConcurrent,
    onRequest: (e) => (e.status >= 500 || !e.complete ? log.warn(e, 'request') : log.info(e, 'request')),
  }).catch((cause: unknown) => {
    throw new SlotflipError('DAEMON_SERVE_LISTEN', `repo serve: cannot listen on ${host}:${port}; pick another --port or --bind`, { cause, details: { host, port } });
  });
  log.info({ url: server.url, root, maxConcurrent }, 'listening');
  io.stderr.write(`serving ${root} at ${server.url} (payloadBaseUrls: ${server.url}targets/)\n`);
  await new Promise<void>((done) => {
    const stop = (signal: string): void => {
      log.info({ signal }, 'stopping');
      server.close(GRACE_MS).then(done, done);
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
  log.info('stopped');
  return 0;
}
