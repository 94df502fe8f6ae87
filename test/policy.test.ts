import t from 'tap'
import type { Scope } from '../src/config/index.ts'
import { canManageProxyKey, canReadToken, canSeeAuditOf, canUseServer, canUseSource, hasScope, refusals, revocationScope } from '../src/broker/policy.ts'

// Every permission rule, as a plain function of the client's configuration.

const client = (over: { id?: string, scopes?: Scope[], servers?: string[] | '*', sources?: string[] | '*' } = {}) =>
  ({ id: over.id ?? 'c', scopes: over.scopes ?? ['token:issue'], servers: over.servers ?? '*', sources: over.sources ?? [] })

t.test('hasScope: the scope, or one of the scopes', async (t) => {
  const c = client({ scopes: ['token:issue', 'audit:read'] })
  t.ok(hasScope(c, 'token:issue'))
  t.ok(hasScope(c, ['token:revoke', 'audit:read']), 'one of several is enough')
  t.notOk(hasScope(c, 'token:revoke'))
  t.notOk(hasScope(c, []), 'no scope named: nothing granted')
  t.same(refusals.scope(c, ['token:revoke', 'server:read']),
    { reason: 'missing_scope', message: 'Client "c" lacks the scope token:revoke or server:read.', detail: { scope: 'token:revoke or server:read' } })
})

t.test('canUseServer: the servers list, or *', async (t) => {
  t.ok(canUseServer(client(), 'anything'), '* reaches every server')
  const c = client({ servers: ['one', 'two'] })
  t.ok(canUseServer(c, 'one'))
  t.notOk(canUseServer(c, 'three'))
  t.notOk(canUseServer(client({ servers: [] }), 'one'), 'an empty list reaches nothing')
  t.same(refusals.server(c, 'three'), { reason: 'forbidden_server', message: 'Client "c" may not use server "three".', detail: { server: 'three' } })
})

t.test('canUseSource: the sources list, or *', async (t) => {
  t.ok(canUseSource(client({ sources: '*' }), 'server://abc'))
  t.ok(canUseSource(client({ sources: ['server://abc'] }), 'server://abc'))
  t.notOk(canUseSource(client({ sources: ['server://abc'] }), 'provider://tv.plex.provider.vod'))
  t.notOk(canUseSource(client(), 'server://abc'), 'none listed: none allowed')
  t.same(refusals.source(client(), 'one', 'server://x'),
    { reason: 'forbidden_source', message: 'Client "c" may not ask for source "server://x".', detail: { server: 'one', source: 'server://x' } })
})

t.test('canReadToken: its own token, or with audit:read a token of a server in its list', async (t) => {
  const owner = client({ id: 'owner', servers: ['one'] })
  t.ok(canReadToken(owner, { client: 'owner', server: 'one' }))
  t.ok(canReadToken(owner, { client: 'owner', server: 'gone' }), 'its own token, even of a server no longer listed')
  t.notOk(canReadToken(owner, { client: 'other', server: 'one' }), 'another client\'s token without audit:read')
  const reader = client({ id: 'reader', scopes: ['audit:read'], servers: ['one'] })
  t.ok(canReadToken(reader, { client: 'other', server: 'one' }))
  t.notOk(canReadToken(reader, { client: 'other', server: 'two' }), 'audit:read reaches only servers of its list')
  t.ok(canReadToken(client({ scopes: ['audit:read'] }), { client: 'other', server: 'two' }), 'audit:read with * reaches every token')
})

t.test('canSeeAuditOf: events of servers in its list; events without a server only with *', async (t) => {
  t.ok(canSeeAuditOf(client(), 'one'))
  t.ok(canSeeAuditOf(client(), null), '* sees events without a server (failed authentications)')
  const limited = client({ servers: ['one'] })
  t.ok(canSeeAuditOf(limited, 'one'))
  t.notOk(canSeeAuditOf(limited, 'two'))
  t.notOk(canSeeAuditOf(limited, null), 'a limited reader does not see events that name other clients and addresses')
})

t.test('revocationScope: a limited client revokes only within its list', async (t) => {
  const all = client({ scopes: ['token:revoke'] })
  t.same(revocationScope(all, { all: true }, 'all'), { selectors: [{ all: true }] }, '* revokes as asked')
  t.same(revocationScope(all, { tokenId: 't1' }, 'token'), { selectors: [{ tokenId: 't1' }] }, '* needs no token lookup')

  const limited = client({ id: 'ops-one', scopes: ['token:revoke'], servers: ['one', 'two'] })
  t.match(revocationScope(limited, { all: true }, 'all'), { refusal: { reason: 'forbidden_server', detail: { selector: 'all' }, message: /ops-one.*servers: \["\*"\]/ } })
  t.same(revocationScope(limited, { server: 'one' }, 'server'), { selectors: [{ server: 'one' }] })
  t.same(revocationScope(limited, { server: 'three' }, 'server'), { refusal: refusals.server(limited, 'three') })
  t.same(revocationScope(limited, { client: 'a', server: 'three' }, 'client_server'), { refusal: refusals.server(limited, 'three') })
  t.same(revocationScope(limited, { server: 'three', target: 'server://x' }, 'source'), { refusal: refusals.server(limited, 'three') })
  t.same(revocationScope(limited, { client: 'a' }, 'client'), { selectors: [{ client: 'a', server: 'one' }, { client: 'a', server: 'two' }] }, 'narrowed per server')
  t.same(revocationScope(limited, { target: 'server://x' }, 'source'),
    { selectors: [{ server: 'one', target: 'server://x' }, { server: 'two', target: 'server://x' }] })
  t.same(revocationScope(limited, { tokenId: 't1' }, 'token', 'one'), { selectors: [{ tokenId: 't1' }] })
  t.same(revocationScope(limited, { tokenId: 't1' }, 'token', 'three'), { selectors: [] }, 'a token of another server matches nothing')
  t.same(revocationScope(limited, { tokenId: 't1' }, 'token'), { selectors: [] }, 'an unknown token matches nothing')
})

t.test('canManageProxyKey: keys bound to a server of its list; keys without a server only with *', async (t) => {
  t.ok(canManageProxyKey(client(), { server: 'one' }))
  t.ok(canManageProxyKey(client(), { server: null }), '* manages keys that reach any server')
  const limited = client({ id: 'ops-one', servers: ['one'] })
  t.ok(canManageProxyKey(limited, { server: 'one' }))
  t.notOk(canManageProxyKey(limited, { server: 'two' }), 'a key of another server')
  t.notOk(canManageProxyKey(limited, { server: null }), 'a key without a server reaches servers outside its list')
  t.match(refusals.unboundProxyKey(limited), { reason: 'forbidden_server', detail: { proxyKey: 'any-server' }, message: /ops-one.*Give a server/ })
})
