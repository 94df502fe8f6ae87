import type { HttpTimeouts } from '../http-server.ts'
import type { Services } from '../services.ts'
import type { ProxyGate } from './gate.ts'
import type { SessionCredentials } from './media-urls.ts'
import type { OpenResponses } from './open-responses.ts'
import type { ProxyMetrics } from './proxy-metrics.ts'
import type { UpstreamPools } from '../plex/upstream.ts'

/** What a proxy listener and its websocket handling share (listener.ts, websocket.ts). */
export interface ProxyListenerDeps {
  services: Services
  gate: ProxyGate
  /** Upstream pools by server name (the services' `upstream`, src/plex/upstream.ts). */
  pools: ReadonlyMap<string, UpstreamPools>
  sessions: SessionCredentials
  open: OpenResponses
  metrics: ProxyMetrics
  timeouts: HttpTimeouts
}
