// Boot-control contract (test/contract/boot-control-suite.ts) for GRUB through the real grub-editenv,
// both variable conventions.
import t from 'tap';
import { runBootControlContract } from './boot-control-suite.js';

runBootControlContract(t, [
  { name: 'grub-greenboot', backend: 'grub', convention: 'greenboot', tearable: true },
  { name: 'grub-rauc', backend: 'grub', convention: 'rauc', tearable: true },
]);
