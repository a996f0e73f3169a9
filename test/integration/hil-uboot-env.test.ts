/**
 * What real U-Boot does with environments fw_setenv (through the HAL) wrote: one-copy flash env,
 * a redundant fw_env.config against a non-redundant U-Boot, incrementing flags and their wrap.
 */
import t from 'tap';
import { registerEnvFindings } from '../hil/uboot-env-findings.js';

registerEnvFindings(t);
