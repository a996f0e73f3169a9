/**
 * `slotflip check --config FILE [--json]`: refresh the signed metadata and say which release this
 * device would install now, and why not when none. Changes nothing but the trusted metadata cache.
 * Exit 0 when a release is available, 4 when there is nothing to install, 5 when the metadata or the
 * selected release's description was rejected (daemon/exit-codes.ts).
 */
import { COMMON_OPTIONS_HELP, openAgent, parseCommandArgs, write } from '../command-support.js';
import type { Command } from './command.js';
import { EXIT, exitCodeForRefusal } from '../exit-codes.js';
import { requestRetryOfFailed } from '../compose.js';

export const command: Command = {
  help: [
    'usage: slotflip check --config FILE [--retry] [--json]',
    '',
    'Refresh the TUF metadata and show the release this device would install now (or why none).',
    'With --retry, releases whose last attempt FAILED (e.g. INSTALL_PAYLOAD_CORRUPT: corrupt at every',
    'mirror) are tried again: the request is left in the state directory and the daemon (or the next',
    '`slotflip update --once`) takes it at its next cycle. Rolled-back releases stay skipped.',
    'Installs nothing. Exit codes: 0 a release is available, 4 nothing to install, 5 the signed',
    'metadata was rejected, 6 busy, 1 error, 2 usage.',
    '',
    'options:',
    COMMON_OPTIONS_HELP,
  ].join('\n'),
  async run(argv, io) {
    const p = parseCommandArgs(argv, io, { retry: { type: 'boolean', default: false } });
    const retryFailed = Boolean(p.values['retry']);
    const opened = await openAgent(p);
    let r;
    try {
      if (retryFailed) await requestRetryOfFailed(opened.config.stateDir, Date.now());
      r = await opened.agent.check({ retryFailed });
    } finally {
      await opened.close();
    }
    if (p.json) {
      write(io, JSON.stringify({ available: r.release !== null, releaseId: r.releaseId ?? null, version: r.release?.custom.version ?? null, securityVersion: r.release?.custom.securityVersion ?? null, reason: r.reason ?? null }));
    } else if (r.release) {
      write(io, `available: ${r.release.custom.version} (${r.releaseId}), securityVersion ${r.release.custom.securityVersion}`);
    } else {
      write(io, `nothing to install: ${r.reason ?? 'no release'}`);
    }
    if (r.release) return EXIT.done;
    const code = /^(MANIFEST_[A-Z_]+):/.exec(r.reason ?? '')?.[1];
    return code ? exitCodeForRefusal(code) : EXIT.nothing;
  },
};
