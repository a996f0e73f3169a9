/**
 * Reference implementation of the custom boot-control protocol (hal/backends/custom.ts) on the
 * emulated board's JSON state file, as plain JavaScript a board integrator can copy. Emulated boards
 * created with `--backend custom` write it to DIR/custom-boot.mjs and call it as
 * `node DIR/custom-boot.mjs STATE_FILE CMDLINE_FILE <command> [SLOT] [N]`.
 */
export const CUSTOM_REFERENCE_SCRIPT = `#!/usr/bin/env node
// Reference implementation of the custom boot-control protocol (see custom.ts) on the emulated
// board's JSON state file. Usage: custom-reference.mjs STATE_FILE CMDLINE_FILE <command> [SLOT] [N]
// Plain JavaScript with no imports beyond node:, so a board integrator can copy it.
import { readFileSync, writeFileSync, renameSync, openSync, fsyncSync, closeSync } from 'node:fs';
import { dirname } from 'node:path';

const [stateFile, cmdlineFile, cmd, slot, n] = process.argv.slice(2);
const fail = (msg) => { process.stderr.write(msg + '\\n'); process.exit(2); };
const other = (s) => (s === 'A' ? 'B' : 'A');
const load = () => JSON.parse(readFileSync(stateFile, 'utf8'));
const save = (s) => {
  const text = JSON.stringify(s, null, 1) + '\\n';
  if (text === JSON.stringify(load(), null, 1) + '\\n') return;
  const tmp = \`\${stateFile}.tmp\`;
  const fd = openSync(tmp, 'w');
  writeFileSync(fd, text);
  fsyncSync(fd);
  closeSync(fd);
  renameSync(tmp, stateFile);
  const d = openSync(dirname(stateFile), 'r');
  fsyncSync(d);
  closeSync(d);
};
const selectable = (e) => e.state === 'good' || (e.state === 'trial' && e.triesLeft > 0);
const needSlot = () => { if (slot !== 'A' && slot !== 'B') fail(\`bad slot \${slot}\`); };

switch (cmd) {
  case 'get-booted': {
    const m = / slotflip\\.slot=([AB])(?: |$)/.exec(' ' + readFileSync(cmdlineFile, 'utf8').trim());
    if (!m) fail('no slotflip.slot on the command line');
    process.stdout.write(m[1] + '\\n');
    break;
  }
  case 'get-state': {
    needSlot();
    const s = load();
    const e = s.slots[slot];
    const first = [s.primary, other(s.primary)].find((x) => selectable(s.slots[x]));
    process.stdout.write(\`\${e.state} \${e.state === 'trial' ? e.triesLeft : 0} \${first === slot ? 1 : 0}\\n\`);
    break;
  }
  case 'mark-bad': { needSlot(); const s = load(); s.slots[slot] = { state: 'bad' }; save(s); break; }
  case 'arm-trial': {
    needSlot();
    if (!/^[1-9]\\d*$/.test(n ?? '')) fail(\`bad tries \${n}\`);
    const s = load(); s.primary = slot; s.slots[slot] = { state: 'trial', triesLeft: Number(n) }; save(s); break;
  }
  case 'commit': { needSlot(); const s = load(); s.primary = slot; s.slots[slot] = { state: 'good' }; save(s); break; }
  default: fail(\`unknown command \${cmd}\`);
}
`;
