/** Entry point copied to the Pi: `node dist/test/hil/rpi/pi-agent-main.js --config agent.json STEP`. */
import { runAgent } from './pi-agent.js';

const report = await runAgent(process.argv.slice(2));
process.stdout.write(JSON.stringify(report) + '\n');
process.exitCode = report.ok ? 0 : 1;
