import { Counter, Gauge, Histogram, type Registry } from '@prometheus-io/client'

/**
 * The proxy's metrics, registered in the instance's registry (metrics.ts). Labels are bounded by
 * configuration (client ids, server names) and fixed enums: never a path, a key or a token.
 */
export class ProxyMetrics {
  readonly requests: Counter<'client' | 'server' | 'decision' | 'status_class'>
  readonly bytes: Counter<'server' | 'direction'>
  readonly websockets: Gauge<'server'>
  readonly upstreamDuration: Histogram<'server' | 'pool'>
  readonly leaks: Counter<'server' | 'secret'>
  readonly keyFailures: Counter<'reason'>
  readonly ended: Counter<'why'>

  constructor (registry: Registry) {
    this.requests = new Counter({
      name: 'ptb_proxy_requests_total',
      help: 'Requests to the PMS proxy by client, server, decision (allow, deny, shadow, unauthenticated, bad_request) and answer status class',
      labelNames: ['client', 'server', 'decision', 'status_class'] as const,
      registers: [registry],
    })
    this.bytes = new Counter({
      name: 'ptb_proxy_bytes_total',
      help: 'Body bytes the PMS proxy passed on, by direction (upstream: to PMS, downstream: to the caller)',
      labelNames: ['server', 'direction'] as const,
      registers: [registry],
    })
    this.websockets = new Gauge({
      name: 'ptb_proxy_websockets_open',
      help: 'Notification websockets open through the PMS proxy on this instance',
      labelNames: ['server'] as const,
      registers: [registry],
    })
    this.upstreamDuration = new Histogram({
      name: 'ptb_proxy_upstream_duration_seconds',
      help: 'Time from forwarding a request to PMS to its answer headers, by pool (api, media)',
      labelNames: ['server', 'pool'] as const,
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [registry],
    })
    this.leaks = new Counter({
      name: 'ptb_proxy_leaks_total',
      help: 'PMS credentials found and blanked in answers by the proxy\'s last line of defence (should stay 0)',
      labelNames: ['server', 'secret'] as const,
      registers: [registry],
    })
    this.keyFailures = new Counter({
      name: 'ptb_proxy_key_failures_total',
      help: 'Requests to the PMS proxy refused for their credential, by reason',
      labelNames: ['reason'] as const,
      registers: [registry],
    })
    this.ended = new Counter({
      name: 'ptb_proxy_open_answers_ended_total',
      help: 'Open proxy answers and websockets ended because their key was revoked or expired (revoked), could not be checked (unchecked) or the broker stopped (shutdown)',
      labelNames: ['why'] as const,
      registers: [registry],
    })
  }
}

export function statusClass (status: number): string {
  return `${Math.floor(status / 100)}xx`
}
