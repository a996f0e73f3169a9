/** Power-cut sweep on an emulated board: see test/harness/daemon-power-cut.ts. */
import t from 'tap';
import { powerCutSweep } from '../harness/daemon-power-cut.js';

t.test('a power cut at every persistent operation of an update (emulated board)', (t) => powerCutSweep(t, 'emulated'));
