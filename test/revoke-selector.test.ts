import t from 'tap'
import { parseRevokeSelector } from '../src/broker/revoke-selector.ts'
import { BrokerError } from '../src/errors.ts'

// The revoke body's selector rules, as a pure function: every accepted shape and every refusal.

t.test('each accepted selector names exactly what it says', async (t) => {
  t.same(parseRevokeSelector({ tokenId: 'tk_x' }), { selector: { tokenId: 'tk_x' }, kind: 'token' })
  t.same(parseRevokeSelector({ client: 'a' }), { selector: { client: 'a' }, kind: 'client' })
  t.same(parseRevokeSelector({ server: 's' }), { selector: { server: 's' }, kind: 'server' })
  t.same(parseRevokeSelector({ client: 'a', server: 's' }), { selector: { client: 'a', server: 's' }, kind: 'client_server' })
  t.same(parseRevokeSelector({ all: true }), { selector: { all: true }, kind: 'all' })
  t.same(parseRevokeSelector({ source: 'server://m' }), { selector: { target: 'server://m' }, kind: 'source' })
  t.same(parseRevokeSelector({ source: 'server://m', server: 's' }), { selector: { server: 's', target: 'server://m' }, kind: 'source' })
  t.same(parseRevokeSelector({ source: 'server://m', client: 'a' }), { selector: { client: 'a', server: undefined, target: 'server://m' }, kind: 'source' })
  t.same(parseRevokeSelector({ source: 'server://m', client: 'a', server: 's' }), { selector: { client: 'a', server: 's', target: 'server://m' }, kind: 'source' })
})

t.test('anything else is a 400 that says what is allowed', async (t) => {
  const refused = [
    {},
    { tokenId: 'tk_x', client: 'a' },
    { tokenId: 'tk_x', server: 's' },
    { tokenId: 'tk_x', all: true as const },
    { all: true as const, client: 'a' },
    { all: true as const, server: 's' },
    { all: true as const, source: 'server://m' },
    { tokenId: 'tk_x', source: 'server://m' },
  ]
  for (const r of refused) {
    try {
      parseRevokeSelector(r)
      t.fail(`${JSON.stringify(r)} accepted`)
    } catch (err) {
      t.ok(err instanceof BrokerError && err.code === 'BAD_REQUEST' && err.statusCode === 400, `${JSON.stringify(r)}: 400`)
      t.match((err as Error).message, /selector|source/, 'says what is allowed')
    }
  }
})
