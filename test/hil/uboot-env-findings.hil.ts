import t from 'tap';
import { registerEnvFindings } from './uboot-env-findings.js';

registerEnvFindings(t);
