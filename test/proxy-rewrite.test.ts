import t from 'tap'
import { Readable } from 'node:stream'
import pino from 'pino'
import { AuditSampler, type SampledEvent } from '../src/proxy/audit-sampler.ts'
import { SessionCredentials, signM3u8, signMpd } from '../src/proxy/media-urls.ts'
import { dashPlayer } from './dash-player.ts'
import { OpenResponses } from '../src/proxy/open-responses.ts'
import { extractCredential, nestedUrl } from '../src/proxy/request-rewrite.ts'
import { LeakScrubber, removeAttributes, rewriteLocation } from '../src/proxy/response-rewrite.ts'

/** The proxy's pure parts: request and answer rewriting, session credentials, sampling, the revocation watcher. */

async function scrub (chunks: string[], secrets: string[]): Promise<{ out: string, found: number }> {
  let found = 0
  const s = new LeakScrubber(secrets, (n) => { found += n })
  const parts: Buffer[] = []
  Readable.from(chunks.map((c) => Buffer.from(c))).pipe(s)
  for await (const c of s) parts.push(c as Buffer)
  return { out: Buffer.concat(parts).toString(), found }
}

t.test('the leak scrubber finds a secret split across chunks at any point, keeping the length', async (t) => {
  const secret = 'transient-0123456789abcdef'
  const body = `<MediaContainer a="1" token="${secret}" b="${secret}x"/>\n`
  for (let cut = 1; cut < body.length; cut++) {
    const { out, found } = await scrub([body.slice(0, cut), body.slice(cut)], [secret, 'adminadminadmin'])
    if (found !== 2 || out.includes(secret) || out.length !== body.length) t.fail(`cut at ${cut}: ${found} found, ${out}`)
  }
  const events = await scrub(['event: ping\ndata: {}\n\n'], [secret])
  t.equal(events.out, 'event: ping\ndata: {}\n\n')
  t.pass('every split point')
})

t.test('the scrubber holds back only a trailing run of token bytes', async (t) => {
  const s = new LeakScrubber(['abcdefghij'], () => {})
  const got: string[] = []
  s.on('data', (c: Buffer) => got.push(c.toString()))
  s.write('data: {}\n\n')
  s.write('x abc')
  await new Promise((resolve) => setImmediate(resolve))
  t.same(got, ['data: {}\n\n', 'x '], 'a complete event passes at once; "abc" could start the secret')
})

t.test('token attributes are removed from XML and JSON, at any depth', async (t) => {
  t.equal(removeAttributes('<MyPlex authToken="abc" username="u"/>', 'text/xml', ['authToken']), '<MyPlex username="u"/>')
  t.equal(removeAttributes("<D accessToken='x' name=\"n\"><C AccessToken=\"y\"/></D>", 'text/xml', ['accessToken']), '<D name="n"><C/></D>')
  t.equal(removeAttributes('{"MediaContainer":{"Device":[{"accessToken":"x","name":"n"}],"token":"t"}}', 'application/json', ['accessToken', 'token']),
    '{"MediaContainer":{"Device":[{"name":"n"}]}}')
  t.equal(removeAttributes('{"token": "t"', 'application/json', ['token']), undefined, 'unparsable JSON is refused, not passed')
})

t.test('Location: PMS origin to proxy origin with the prefix, tokens removed everywhere', async (t) => {
  const o = { pmsOrigin: 'http://10.0.0.5:32400', proxyOrigin: 'http://broker:32401', prefix: '/pms/a' }
  t.equal(rewriteLocation('http://10.0.0.5:32400/web/index.html?X-Plex-Token=s&x=1', o), 'http://broker:32401/pms/a/web/index.html?x=1')
  t.equal(rewriteLocation('/library?x-plex-token=s', o), 'http://broker:32401/pms/a/library')
  t.equal(rewriteLocation('https://app.plex.tv/x?X-PLEX-TOKEN=s', o), 'https://app.plex.tv/x')
})

t.test('credentials: header and every query occurrence, same value required; nested urls', async (t) => {
  const pms = (u: URL): boolean => u.origin === 'http://10.0.0.5:32400'
  t.match(extractCredential('k', 'a=1&X-Plex-Token=k&x-plex-token=k&b=2', pms), { ok: true, credential: 'k', query: 'a=1&b=2' })
  t.match(extractCredential(undefined, 'X-Plex-Token=k1&X-Plex-Token=k2', pms), { ok: false, reason: 'conflicting-credentials' })
  t.match(extractCredential(undefined, 'X-Plex-Token=%zz', pms), { ok: false, reason: 'bad-encoding' })
  t.equal(nestedUrl('http://10.0.0.5:32400/library/metadata/1/thumb/2?X-Plex-Token=s&w=1', pms), '/library/metadata/1/thumb/2?w=1')
  t.equal(nestedUrl('http://localhost:32400/x?X-Plex-Client-Identifier=c', pms), '/x')
  t.equal(nestedUrl('/library/metadata/1/thumb/2', pms), '/library/metadata/1/thumb/2')
  t.equal(nestedUrl('http://image.tmdb.org/t/p/x.jpg', pms), undefined)
  t.equal(nestedUrl('//evil.example/x', pms), undefined, 'protocol-relative is another host')
  t.equal(nestedUrl('http://user:pw@10.0.0.5:32400/x', pms), undefined)
  t.equal(nestedUrl('file:///etc/passwd', pms), undefined)
})

t.test('session credentials open one session directory of one server, until they expire', async (t) => {
  let now = 1_000_000
  const c = new SessionCredentials(Buffer.alloc(32, 7), () => now)
  const prefix = '/video/:/transcode/universal/session/s1/'
  const cred = c.sign('AAAAAAAAAAAA', 'default', prefix)
  t.equal(c.verify(cred, 'default', `${prefix}base/00001.ts`), 'AAAAAAAAAAAA')
  t.equal(c.verify(cred, 'other', `${prefix}base/00001.ts`), undefined, 'another server')
  t.equal(c.verify(cred, 'default', '/video/:/transcode/universal/session/s2/base/00001.ts'), undefined, 'another session')
  t.equal(c.verify(cred, 'default', '/library/sections'), undefined, 'another path')
  t.equal(c.verify(cred.replace('AAAAAAAAAAAA', 'BBBBBBBBBBBB'), 'default', `${prefix}x`), undefined, 'another key id')
  t.equal(new SessionCredentials(Buffer.alloc(32, 8), () => now).verify(cred, 'default', `${prefix}x`), undefined, 'another BROKER_SECRET')
  now += 9 * 3600_000
  t.equal(c.verify(cred, 'default', `${prefix}x`), undefined, 'expired')
  const m = signM3u8('#EXTM3U\n#EXT-X-KEY:METHOD=AES-128,URI="session/s1/key?X-Plex-Token=pmstoken"\nsession/s1/base/index.m3u8\n/elsewhere.m3u8\n', '/video/:/transcode/universal/start.m3u8', () => 'SIG')
  t.equal(m, '#EXTM3U\n#EXT-X-KEY:METHOD=AES-128,URI="session/s1/key?X-Plex-Token=SIG"\nsession/s1/base/index.m3u8?X-Plex-Token=SIG\n/elsewhere.m3u8\n')
})

t.test('DASH: every URL a player derives from the MPD\'s BaseURLs and templates carries the session credential', async (t) => {
  const manifest = '/video/:/transcode/universal/start.mpd'
  const sign = (prefix: string): string => `SIG${prefix.split('/')[6]}`
  const player = (mpd: string): ReturnType<typeof dashPlayer> => dashPlayer(signMpd(mpd, manifest, sign), `http://proxy${manifest}?session=s1`, 2)
  const session = 'http://proxy/video/:/transcode/universal/session/s1/'

  // Relative templates under BaseURLs at three levels, the last one per Representation, with attributes around it.
  const nested = `<?xml version="1.0"?><MPD xmlns="urn:mpeg:dash:schema:mpd:2011"><BaseURL>session/</BaseURL>
<Period><BaseURL serviceLocation="a">s1/</BaseURL><AdaptationSet>
<SegmentTemplate startNumber='0' media='$Number%05d$.m4s' initialization = "header?a=1&amp;X-Plex-Token=pmstoken" />
<Representation id="0" bandwidth="1"><BaseURL>0/</BaseURL></Representation>
<Representation id="1" bandwidth="1"><BaseURL>1/</BaseURL></Representation>
</AdaptationSet></Period></MPD>`
  t.same(player(nested), [
    { id: '0', init: `${session}0/header?a=1&X-Plex-Token=SIGs1`, media: [`${session}0/00000.m4s?X-Plex-Token=SIGs1`, `${session}0/00001.m4s?X-Plex-Token=SIGs1`] },
    { id: '1', init: `${session}1/header?a=1&X-Plex-Token=SIGs1`, media: [`${session}1/00000.m4s?X-Plex-Token=SIGs1`, `${session}1/00001.m4s?X-Plex-Token=SIGs1`] },
  ], 'BaseURL chains, single quotes, spaces around =, entities, a PMS token removed')

  // A template written once for Representations whose BaseURLs (coming after it) lead into the session.
  const perRepresentation = (second: string): string => '<MPD><Period><AdaptationSet><SegmentTemplate media="$Number$.m4s" startNumber="0"/>' +
    `<Representation id="0"><BaseURL>session/s1/0/</BaseURL></Representation><Representation id="1"><BaseURL>${second}</BaseURL></Representation></AdaptationSet></Period></MPD>`
  t.same(player(perRepresentation('session/s1/1/')).map((r) => r.media[1]), [`${session}0/1.m4s?X-Plex-Token=SIGs1`, `${session}1/1.m4s?X-Plex-Token=SIGs1`])
  t.same(player(perRepresentation('session/s2/1/')).map((r) => r.media[1]), [`${session}0/1.m4s`, 'http://proxy/video/:/transcode/universal/session/s2/1/1.m4s'],
    'Representations in two sessions: nothing signed (no credential can open both)')

  // SegmentList and SegmentBase (the BaseURL is the media itself); a namespace prefix; character references.
  const lists = `<mpd:MPD xmlns:mpd="urn:mpeg:dash:schema:mpd:2011"><mpd:Period><mpd:AdaptationSet>
<mpd:Representation id="a"><mpd:BaseURL>session/s1/a/</mpd:BaseURL><mpd:SegmentList><mpd:Initialization sourceURL="init.mp4"/>
<mpd:SegmentURL media="0.m4s?a=1&#38;b=2"/><mpd:SegmentURL media="1.m4s"/></mpd:SegmentList></mpd:Representation>
<mpd:Representation id="b"><mpd:BaseURL>session/s1/b/file.mp4?X-Plex-Token=pmstoken</mpd:BaseURL><mpd:SegmentBase indexRange="0-99"/></mpd:Representation>
</mpd:AdaptationSet></mpd:Period></mpd:MPD>`
  const signed = signMpd(lists, manifest, sign)
  t.notOk(signed.includes('pmstoken'))
  const parsed = dashPlayer(signed, `http://proxy${manifest}`, 2)
  t.same(parsed, [
    { id: 'a', init: `${session}a/init.mp4?X-Plex-Token=SIGs1`, media: [`${session}a/0.m4s?a=1&b=2&X-Plex-Token=SIGs1`, `${session}a/1.m4s?X-Plex-Token=SIGs1`] },
    { id: 'b', media: [`${session}b/file.mp4?X-Plex-Token=SIGs1`] },
  ])

  // What leads elsewhere is left alone: another host, a path outside any session, a URL in a comment or text.
  const elsewhere = '<MPD><BaseURL>http://cdn.example/v/</BaseURL><Period><AdaptationSet><SegmentTemplate media="session/s1/$Number$.m4s"/>' +
    '<Representation id="0"/></AdaptationSet></Period><!-- media="session/s1/x" --></MPD>'
  t.equal(signMpd(elsewhere, manifest, sign), elsewhere)
  const outside = '<MPD><Period><AdaptationSet><SegmentTemplate media="/library/parts/1/$Number$.m4s"/></AdaptationSet></Period></MPD>'
  t.equal(signMpd(outside, manifest, sign), outside)
})

t.test('the audit sampler writes one event per key and path per window, then a count', async (t) => {
  const written: SampledEvent[] = []
  const s = new AuditSampler({ write: (e) => written.push(e), windowMs: 60_000 })
  for (let i = 0; i < 1000; i++) s.record('k1/path', { action: 'proxy.denied', detail: { path: '/a' } })
  s.record('k2/path', { action: 'proxy.denied', detail: { path: '/b' } })
  t.equal(written.length, 2, 'a flood is one event')
  s.flush()
  t.equal(written.length, 3)
  t.match(written[2], { action: 'proxy.denied', detail: { path: '/a', repeats: 999 } })
  const capped = new AuditSampler({ write: (e) => written.push(e), maxEntries: 10 })
  const before = written.length
  for (let i = 0; i < 100; i++) capped.record(`k${i}`, { action: 'x', detail: {} })
  t.equal(written.length - before, 10, 'memory and events bounded')
  capped.flush()
})

t.test('open answers: a revoked key\'s end; an unreadable Redis ends them after the grace', async (t) => {
  const logger = pino({ level: 'silent' })
  const ended: string[] = []
  let dead = new Set<string>()
  let failing = false
  const open = new OpenResponses({ logger, intervalMs: 60_000, failClosedAfterMs: 0, unusable: async () => { if (failing) throw new Error('down'); return dead } })
  const remove = open.add({ keyId: 'a', end: (why) => ended.push(`a:${why}`) })
  open.add({ keyId: 'b', end: (why) => ended.push(`b:${why}`) })
  await open.check()
  t.same(ended, [])
  dead = new Set(['a'])
  await open.check()
  t.same(ended, ['a:revoked'])
  remove()
  failing = true
  await open.check()
  t.same(ended, ['a:revoked', 'b:unchecked'], 'fail closed when keys cannot be checked')
  t.equal(open.size, 0)
  open.add({ keyId: 'c', end: (why) => ended.push(`c:${why}`) })
  open.close()
  t.same(ended.slice(-1), ['c:shutdown'], 'shutdown ends the rest')
})
