// Issue 22, sequence 3 (see trial-safety.ts): health fails and the boot environment is read-only
// for that run, so the rollback's mark-bad fails.
import { runSequence } from './trial-safety.js';

runSequence('health fails and the boot environment is unwritable for that run', ['grub/rauc', 'custom', 'emulated']);
