/**
 * The one error class slotflip's I/O code throws. Pure code returns results instead.
 *
 * Codes are public API (status reports and logs carry them): SCREAMING_SNAKE with a module prefix
 * (`HAL_`, `MANIFEST_`, `INSTALL_`, `DAEMON_`), never reused once retired. Check errors by `code`
 * (`isCoded(e, 'HAL_BOOTENV_PARSE')`), not by `instanceof`: two installed copies must not break it.
 * `manifests/` and `daemon/` use this class too; it is a leaf module with no imports of its own.
 */
export interface ErrorOptions {
  cause?: unknown;
  /** true when the same operation may succeed if tried again later (network, busy device). */
  retryable?: boolean;
  /** machine-readable context: path, field, topic, URL, offsets. Never secrets. */
  details?: Record<string, unknown>;
}

export class SlotflipError extends Error {
  readonly code: string;
  readonly retryable: boolean;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: string, message: string, options: ErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'SlotflipError';
    this.code = code;
    this.retryable = options.retryable ?? false;
    this.details = options.details;
  }

  toJSON(): Record<string, unknown> {
    return { code: this.code, message: this.message, retryable: this.retryable, details: this.details };
  }
}

/** True when `e` carries the given code (or any code, when none is given). */
export function isCoded(e: unknown, code?: string): e is { code: string; message: string; retryable?: boolean; details?: Record<string, unknown> } {
  if (typeof e !== 'object' || e === null || typeof (e as { code?: unknown }).code !== 'string') return false;
  return code === undefined || (e as { code: string }).code === code;
}

/** The code of any thrown value, for reports: coded errors keep theirs, others map to `fallback`. */
export function codeOf(e: unknown, fallback = 'UNEXPECTED'): string {
  return isCoded(e) ? e.code : fallback;
}
