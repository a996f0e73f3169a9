/**
 * The streaming installer's public API (the daemon's install command and update runner call this).
 */
export { installPayload, toSource, validateIndex } from './installer.js';
export type { InstallOptions, InstallProgress, InstallResult, InstallSourceSpec, RetryOptions, WatchdogOptions } from './installer.js';
export { httpSource, fileSource } from './source.js';
export type { PayloadSource, OpenedStream, HttpSourceOptions, TlsOptions } from './source.js';
export { readResumeHint, writeResumeHint } from './resume-state.js';
export type { ResumeRecord } from './resume-state.js';
