// Issue 22, sequence 1 (see trial-safety.ts): the trial reboot fails, then power cuts.
import { runSequence } from './trial-safety.js';

runSequence('trial reboot fails, then power cuts', ['emulated', 'uboot/rauc', 'rpi-tryboot']);
