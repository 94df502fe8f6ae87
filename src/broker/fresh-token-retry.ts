import type { ServerConfig } from '../config/index.ts'
import type { RequestContext } from './audit-writer.ts'
import type { IssueResult } from './issuer.ts'
import type { RejectionCheck } from './rejection-check.ts'

/**
 * The broker's side of "PMS answered 401 → report the token → fresh token → retry once", for
 * every place on the server that sends a client's transient token to PMS (the proxy's HTTP
 * forwarding and its websocket upgrades). The contract, shared by copy with the client library's
 * `fetchPms`, is in docs/architecture.md (*A 401 from PMS*); test/fresh-token-contract.test.ts
 * runs one scenario table against both.
 */

/** A request PMS answered 401 to. */
export interface RejectedRequest {
  client: string
  server: ServerConfig
  ctx: RequestContext
  /** The token PMS refused. */
  used: IssueResult
  /** Whether the request can be sent again exactly as it was (the caller of this step decides). */
  replayable: boolean
  /** Whether the 401 answers the retry already: then nothing more is reported or retried. */
  retried: boolean
}

export type AfterRejection =
  /** Send the request once more, with `token`. */
  | { retry: true, token: IssueResult }
  /** Answer the caller 401 (`answer401`); `replaced` says whether the token was replaced meanwhile. */
  | { retry: false, token: IssueResult, replaced: boolean, reported: boolean }

/**
 * What to do about one 401: at most one report per request, through the rejection check (which
 * replaces the token only when PMS really refuses it); one retry, when the request is replayable
 * and the report brought another token. Throws what the report throws (an HTTP error: 404 for a
 * token that is not the client's, 502/503 when PMS cannot be asked).
 */
export async function afterRejection (rejection: RejectionCheck, r: RejectedRequest): Promise<AfterRejection> {
  if (r.retried) return { retry: false, token: r.used, replaced: false, reported: false }
  const fresh = await rejection.report(r.client, r.server, r.used.tokenId, r.ctx)
  const replaced = fresh.tokenId !== r.used.tokenId
  if (replaced && r.replayable) return { retry: true, token: fresh }
  return { retry: false, token: fresh, replaced, reported: true }
}

/**
 * The step around a request that is sent and answered in one promise (a websocket upgrade, a
 * call made by the broker itself): `send` with `first`; on a 401, `afterRejection`, and `send`
 * again at most once. Returns the last answer and the token it was sent with.
 */
export async function sendWithFreshToken<R> (
  rejection: RejectionCheck,
  req: Omit<RejectedRequest, 'used' | 'retried'>,
  first: IssueResult,
  send: (token: IssueResult) => Promise<R>,
  status: (answer: R) => number
): Promise<{ answer: R, token: IssueResult, after?: AfterRejection }> {
  const answer = await send(first)
  if (status(answer) !== 401) return { answer, token: first }
  const after = await afterRejection(rejection, { ...req, used: first, retried: false })
  if (!after.retry) return { answer, token: after.token, after }
  return { answer: await send(after.token), token: after.token, after }
}

/** What the caller is told when a 401 is not retried away (JSON error message, status 401). */
export function answer401 (server: string, after: AfterRejection | undefined): string {
  if (after === undefined || after.retry || !after.reported) {
    return `PMS "${server}" rejected the broker's token again, after it was checked and replaced; retry later.`
  }
  if (after.replaced) return `PMS "${server}" rejected the broker's token for this request; it has been checked and replaced: retry.`
  return `PMS "${server}" answered 401 to this request, but the broker's token is valid (checked); retrying will not help.`
}
