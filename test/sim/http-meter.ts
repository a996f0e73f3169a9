/**
 * A metering reverse proxy for the fleet simulator: forwards every request to the real payload
 * server (test/harness/http-server.ts) and counts requests, bytes and the peak number of requests in
 * flight at once (from the request's arrival until its response is finished or torn down).
 * Keep-alive connections are pooled towards the upstream, so the proxy adds no connection churn.
 */
import http from 'node:http';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';

export interface HttpMeterStats {
  requests: number;
  inFlight: number;
  peakInFlight: number;
  bytes: number;
  /** responses by status code. */
  statuses: Record<number, number>;
}

export interface HttpMeter {
  /** base URL of the proxy, with a trailing slash. */
  url: string;
  stats(): HttpMeterStats;
  /** starts a new peak measurement (returns the peak so far). */
  resetPeak(): number;
  stop(): Promise<void>;
}

export async function startHttpMeter(upstreamUrl: string): Promise<HttpMeter> {
  const up = new URL(upstreamUrl);
  const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });
  const s: HttpMeterStats = { requests: 0, inFlight: 0, peakInFlight: 0, bytes: 0, statuses: {} };
  const server = http.createServer((req, res) => {
    s.requests++;
    s.inFlight++;
    s.peakInFlight = Math.max(s.peakInFlight, s.inFlight);
    let done = false;
    const finish = (): void => {
      if (done) return;
      done = true;
      s.inFlight--;
    };
    res.once('close', finish);
    res.once('finish', finish);
    const headers = { ...req.headers, host: up.host };
    const fwd = http.request({ host: up.hostname, port: up.port, path: req.url, method: req.method, headers, agent }, (ur) => {
      s.statuses[ur.statusCode ?? 0] = (s.statuses[ur.statusCode ?? 0] ?? 0) + 1;
      res.writeHead(ur.statusCode ?? 502, ur.headers);
      ur.on('data', (c: Buffer) => { s.bytes += c.length; });
      ur.pipe(res);
      ur.once('error', () => res.destroy());
    });
    fwd.once('error', () => {
      if (!res.headersSent) res.writeHead(502).end();
      else res.destroy();
    });
    res.once('close', () => fwd.destroy());
    req.pipe(fwd);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}/`,
    stats: () => ({ ...s, statuses: { ...s.statuses } }),
    resetPeak: () => {
      const p = s.peakInFlight;
      s.peakInFlight = s.inFlight;
      return p;
    },
    async stop() {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
      agent.destroy();
    },
  };
}
