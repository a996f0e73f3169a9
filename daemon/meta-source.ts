/**
 * Broker first, repository behind it: the metadata source of a device whose config lists
 * `{type:'mqtt'}` and then an HTTP (or dir) repository in `trust.sources`.
 *
 * Trade-off: MQTT is the fast path, the repository the source of truth. A retained copy is used when
 * the broker has one (no request), anything missing is fetched from the repository, and
 * `timestamp.json` — the one file that says whether there is anything new — is read from both and
 * the newer one wins, so a broker that never delivers the retained release (a cluster node that
 * replicates nothing retained, a device that connected to another node) delays nothing. When a
 * refresh fails on a copy the broker served, `refreshWithFallback` drops that copy (the transport
 * refuses the same bytes from then on) and refreshes again from the repository alone.
 */
import type { MetadataSource } from '../manifests/client.js';

export interface BrokerFirstSource extends MetadataSource {
  /** names served from the broker since the last `resetServed`. */
  served(): string[];
  resetServed(): void;
}

function versionOf(bytes: Uint8Array | undefined): number {
  if (!bytes) return -1;
  try {
    const v = (JSON.parse(Buffer.from(bytes).toString('utf8')) as { signed?: { version?: unknown } }).signed?.version;
    return typeof v === 'number' && Number.isSafeInteger(v) ? v : -1;
  } catch {
    return -1;
  }
}

export function brokerFirstSource(broker: Map<string, Uint8Array>, repository: MetadataSource): BrokerFirstSource {
  const served = new Set<string>();
  return {
    served: () => [...served],
    resetServed: () => served.clear(),
    async fetch(name, maxBytes) {
      const b = broker.get(name);
      const fromBroker = (): Uint8Array | undefined => {
        if (!b || b.byteLength > maxBytes) return undefined;
        served.add(name);
        return new Uint8Array(b);
      };
      if (name === 'timestamp.json') {
        let h: Uint8Array | undefined;
        try {
          h = await repository.fetch(name, maxBytes);
        } catch (e) {
          const got = fromBroker();
          if (got) return got;
          throw e;
        }
        if (h && versionOf(h) >= versionOf(b)) return h;
        return fromBroker() ?? h;
      }
      return fromBroker() ?? repository.fetch(name, maxBytes);
    },
  };
}

/** What the transport offers the refresh: drop a rejected copy, forget the problems of a good one. */
export interface BrokerMetaHooks {
  distrustMetadata(file: string, code: string, message: string): void;
  metadataVerified(file: string): void;
}

const REJECTIONS = /^MANIFEST_(PARSE|INVALID|WRONG_ROLE|SIGNATURE|HASH_MISMATCH|VERSION_MISMATCH|ROLLBACK|EXPIRED|ROOT_VERSION|TOO_LARGE|DELEGATION_INVALID)$/;

/**
 * Runs `refresh` once; when it fails with a verification error after the broker served some of the
 * files, drops the blamed broker copies (the file the error names, else every served one) and runs
 * it again: the second run reads those files from the repository.
 */
export async function refreshWithFallback<T>(source: BrokerFirstSource, hooks: BrokerMetaHooks | undefined, refresh: () => Promise<T>): Promise<T> {
  source.resetServed();
  try {
    const r = await refresh();
    for (const f of source.served()) hooks?.metadataVerified(f);
    return r;
  } catch (e) {
    const served = source.served();
    const code = (e as { code?: unknown }).code;
    if (served.length === 0 || typeof code !== 'string' || !REJECTIONS.test(code)) throw e;
    const where = (e as { details?: { where?: unknown; name?: unknown } }).details;
    const named = [where?.where, where?.name].filter((x): x is string => typeof x === 'string').map((x) => x.split(' ')[0]!);
    const blamed = served.filter((f) => named.includes(f));
    for (const f of blamed.length > 0 ? blamed : served) hooks?.distrustMetadata(f, code, (e as Error).message);
    source.resetServed();
    return refresh();
  }
}
