/**
 * The Raspberry Pi runner (test/hil/rpi) against a simulated Pi: the real Pi-side agent and the HAL's
 * `rpi-tryboot` backend on files, and a firmware model that follows the documented tryboot rules
 * (`reboot "0 tryboot"` boots [tryboot] boot_partition once; any other boot uses [all]). The real
 * hardware run is `node dist/test/hil/rpi/run-rpi.js --host …` (see test/hil/rpi/README.md).
 */
import t from 'tap';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseAutoboot } from '../../hal/backends/rpi-tryboot.js';
import { runAgent } from '../hil/rpi/pi-agent.js';
import { PLANS, parseArgs, runPlans, shellQuote, type Remote } from '../hil/rpi/run-rpi.js';

async function simulatedPi(dir: string, opts: { honoursTryboot: boolean }): Promise<Remote> {
  const bootDir = join(dir, 'boot');
  await mkdir(bootDir, { recursive: true });
  await writeFile(join(bootDir, 'autoboot.txt'), '[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=2\n');
  const flag = join(dir, 'tryboot-flag');
  const cmdline = join(dir, 'cmdline');
  const config = join(dir, 'agent.json');
  await writeFile(config, JSON.stringify({ bootDir, trybootFlagFile: flag, cmdlinePath: cmdline }));
  let boot = 0;
  const powerOn = async (tryboot: boolean) => {
    const a = parseAutoboot(await readFile(join(bootDir, 'autoboot.txt'), 'utf8'));
    const useTry = tryboot && a.trybootAB && opts.honoursTryboot;
    const part = useTry ? a.trybootPartition : a.bootPartition;
    const b = Buffer.alloc(4);
    b.writeUInt32BE(useTry ? 1 : 0);
    await writeFile(flag, b);
    await writeFile(cmdline, `console=serial0 root=/dev/mmcblk0p${part + 3} slotflip.slot=${part === 2 ? 'A' : 'B'}\n`);
    boot++;
  };
  await powerOn(false);
  return {
    agent: (step) => runAgent(['--config', config, ...step]),
    bootId: async () => `boot-${boot}`,
    reboot: (arg) => powerOn(arg === '0 tryboot'),
  };
}

const deps = (remote: Remote, log: string[]) => ({ remote, now: () => 0, sleep: async () => undefined, rebootTimeoutMs: 60_000, log: (l: string) => log.push(l) });

t.test('every tryboot plan passes against firmware that follows the tryboot rules', async (t) => {
  const log: string[] = [];
  const remote = await simulatedPi(t.testdir(), { honoursTryboot: true });
  const results = await runPlans(PLANS, { ...deps(remote, log), now: (() => { let n = 0; return () => (n += 1000); })() });
  t.same(results.filter((r) => r.problem).map((r) => `${r.plan}#${r.index}: ${r.problem}`), [], 'no step failed');
  t.equal(results.length, PLANS.reduce((n, p) => n + p.steps.length, 0), 'every step ran');
  const end = await remote.agent(['status']);
  t.equal(end.booted, 'A', 'the Pi ends on its original committed slot');
});

t.test('firmware that ignores tryboot is caught at the first trial boot', async (t) => {
  const log: string[] = [];
  const remote = await simulatedPi(t.testdir(), { honoursTryboot: false });
  const results = await runPlans([PLANS.find((p) => p.name === 'tryboot-commit')!], { ...deps(remote, log), now: (() => { let n = 0; return () => (n += 1000); })() });
  const failed = results.filter((r) => r.problem);
  t.equal(failed.length, 1);
  t.match(failed[0]!.problem, /booted A, expected B/);
});

t.test('command line: host is required and checked; remote words are quoted', async (t) => {
  t.throws(() => parseArgs([]), /--host/);
  t.throws(() => parseArgs(['--host', '-oProxyCommand=x']), /--host/);
  t.throws(() => parseArgs(['--host', 'pi@raspberrypi.local', '--scenario', 'nope']), /unknown scenario/);
  const o = parseArgs(['--host', 'pi@192.168.1.50', '--port', '2222', '--scenario', 'health-fail-rollback']);
  t.same([o.host, o.port, o.scenarios, o.bootDir], ['pi@192.168.1.50', 2222, ['health-fail-rollback'], '/boot/firmware']);
  t.equal(shellQuote("0 tryboot; rm -rf '/'"), `'0 tryboot; rm -rf '\\''/'\\'''`);
});
