/**
 * A loopback HTTP proxy in front of a real server (e.g. `slotflip repo serve`): forwards every
 * request unchanged (Range headers included, so multi-range answers pass through byte for byte),
 * records each one as it went over the wire (path, Range, status, body bytes), and lets a test
 * step in at a chosen moment: `hold` delays a request until the test is done with what it wanted to
 * do meanwhile (e.g. change a slot after the device indexed it), `stallAfter` sends only part of an
 * answer and then nothing more (the device is then killed mid-way).
 *
 * Only loopback; the proxy never changes a byte it forwards.
 */
import { once } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';

export interface ProxiedRequest {
  path: string;
  range: string | undefined;
  status: number;
  /** body bytes forwarded to the client. */
  bytes: number;
}

export interface GateProxyOptions {
  /** base URL of the real server (`http://127.0.0.1:PORT/`). */
  upstream: string;
  /** awaited before a request is forwarded (n: 0-based request number). */
  hold?: (path: string, n: number, range: string | undefined) => Promise<void> | void;
  /** forward only this many body bytes of the answer, then keep the connection open and silent. */
  stallAfter?: (path: string, n: number) => number | undefined;
}

export interface GateProxy {
  url: string;
  requests: ProxiedRequest[];
  stop(): Promise<void>;
}

export async function startGateProxy(o: GateProxyOptions): Promise<GateProxy> {
  const up = new URL(o.upstream);
  const requests: ProxiedRequest[] = [];
  let n = 0;
  const server = http.createServer((req, res) => {
    const k = n++;
    const path = (req.url ?? '/').split('?')[0]!;
    const rec: ProxiedRequest = { path, range: req.headers.range, status: 0, bytes: 0 };
    requests.push(rec);
    void (async () => {
      await o.hold?.(path, k, req.headers.range);
      const fwd = http.request({ host: up.hostname, port: up.port, path: req.url, method: req.method, headers: { ...req.headers, host: up.host }, agent: false }, (ans) => {
        rec.status = ans.statusCode ?? 0;
        res.writeHead(ans.statusCode ?? 502, ans.headers);
        const cap = o.stallAfter?.(path, k);
        ans.on('data', (d: Buffer) => {
          if (cap !== undefined && rec.bytes + d.length > cap) {
            const part = d.subarray(0, Math.max(0, cap - rec.bytes));
            if (part.length > 0) res.write(part);
            rec.bytes += part.length;
            ans.destroy(); // nothing more: the client waits (until it is killed or times out)
            return;
          }
          rec.bytes += d.length;
          res.write(d);
        });
        ans.on('end', () => res.end());
      });
      fwd.on('error', () => res.destroy());
      req.pipe(fwd);
    })();
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}/`,
    requests,
    async stop() {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}
