// Boot-control contract (test/contract/boot-control-suite.ts) for U-Boot through the real
// fw_printenv/fw_setenv on a redundant environment, both variable conventions.
import t from 'tap';
import { runBootControlContract } from './boot-control-suite.js';

runBootControlContract(t, [
  { name: 'uboot-rauc', backend: 'uboot', convention: 'rauc', tearable: true },
  { name: 'uboot-mender', backend: 'uboot', convention: 'mender', tearable: true },
]);
