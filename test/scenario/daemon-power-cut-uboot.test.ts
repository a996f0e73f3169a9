/** Power-cut sweep on a U-Boot board (RAUC convention, real fw_setenv/fw_printenv on a redundant env): see test/harness/daemon-power-cut.ts. */
import t from 'tap';
import { powerCutSweep } from '../harness/daemon-power-cut.js';

t.test('a power cut at every persistent operation of an update (uboot board)', (t) => powerCutSweep(t, 'uboot'));
