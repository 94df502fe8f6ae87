/**
 * An open-loop load generator for one fixed rate, run as its own process (never inside the server
 * it measures). Requests are scheduled every 1/rate seconds whatever the server does, and each
 * latency is measured from the moment the request was *due*, not from when it was sent: a server
 * that stalls is charged for the requests that queued behind the stall (no coordinated omission,
 * unlike a closed loop, and unlike autocannon's `overallRate`, which sends in bursts).
 *
 * Usage: node bench/fixed-rate.ts URL RATE SECONDS CONNECTIONS [BEARER]
 * Prints one JSON line: { sent, ok, errors, p50, p90, p99, p999 } (milliseconds).
 */
import { Pool } from 'undici'

const [url, rateArg, secondsArg, connArg, secret] = process.argv.slice(2)
const rate = Number(rateArg)
const seconds = Number(secondsArg)
if (url === undefined) throw new Error('usage: node bench/fixed-rate.ts URL RATE SECONDS CONNECTIONS [BEARER]')
const target = new URL(url)
const pool = new Pool(target.origin, { connections: Number(connArg ?? 32), pipelining: 1 })
const headers: Record<string, string> = { 'content-type': 'application/json' }
if (secret !== undefined) headers.authorization = `Bearer ${secret}`
const body = JSON.stringify({ server: 'default' })

const latencies: number[] = []
let ok = 0
let errors = 0
const total = Math.round(rate * seconds)
const start = performance.now()
const interval = 1000 / rate
const pending: Array<Promise<void>> = []

for (let i = 0; i < total; i++) {
  const due = start + i * interval
  const wait = due - performance.now()
  if (wait > 1) await new Promise((resolve) => setTimeout(resolve, wait))
  pending.push(pool.request({ path: target.pathname, method: 'POST', headers, body }).then(async (r) => {
    await r.body.dump()
    latencies.push(performance.now() - due)
    if (r.statusCode === 200) ok++
    else errors++
  }, () => { errors++ }))
}
await Promise.all(pending)
await pool.close()
latencies.sort((a, b) => a - b)
const q = (p: number): number => Math.round(100 * (latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))] ?? 0)) / 100
process.stdout.write(JSON.stringify({ sent: total, ok, errors, p50: q(0.5), p90: q(0.9), p99: q(0.99), p999: q(0.999) }) + '\n')
