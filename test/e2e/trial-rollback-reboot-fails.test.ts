// Issue 22, sequence 2 (see trial-safety.ts): health fails, mark-bad succeeds, the reboot fails.
import { runSequence } from './trial-safety.js';

runSequence('health fails, mark-bad succeeds, reboot fails', ['uboot/mender', 'grub/greenboot', 'systemd-boot/v252']);
