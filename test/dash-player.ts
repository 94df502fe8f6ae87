import { XMLParser } from 'fast-xml-parser'

/**
 * What a DASH player does with an MPD, for the proxy's tests: an XML parser of its own (not the
 * proxy's text rewriting), then the URL rules of ISO/IEC 23009-1 (5.6, 5.3.9.4): `BaseURL`s of
 * the MPD, Period, AdaptationSet and Representation each resolved against the one above, the
 * first against the manifest's URL; a Representation's SegmentTemplate (its own attributes over
 * its AdaptationSet's) filled in (`$RepresentationID$`, `$Number$`, `$Number%05d$`, `$Bandwidth$`,
 * `$$`) and resolved against that base. Only what the tests' manifests use: SegmentTemplate with
 * `$Number$` (no SegmentTimeline), SegmentList, or a bare BaseURL (SegmentBase).
 */

export interface DashRepresentation {
  id: string
  /** The init segment's URL, if the Representation has one. */
  init?: string
  /** The first `count` media segments' URLs (one: the BaseURL itself, for SegmentBase). */
  media: string[]
}

type El = Record<string, unknown>

const LISTS = new Set(['Period', 'AdaptationSet', 'Representation', 'BaseURL', 'SegmentURL'])

function children (el: El | undefined, name: string): El[] {
  const v = el?.[name]
  if (v === undefined) return []
  return (Array.isArray(v) ? v : [v]).map((x) => (typeof x === 'object' && x !== null ? x as El : { '#text': String(x) }))
}

function text (el: El): string {
  return String(el['#text'] ?? '').trim()
}

/** The base URL an element sets for what it contains: its first BaseURL resolved against `base`. */
function baseOf (el: El, base: string): string {
  const first = children(el, 'BaseURL')[0]
  return first === undefined ? base : new URL(text(first), base).href
}

function fill (template: string, id: string, bandwidth: string, n: number): string {
  return template.replace(/\$(RepresentationID|Number|Bandwidth|Time|)(%0(\d+)d)?\$/g, (_m, name: string, _f, width?: string) => {
    if (name === '') return '$'
    const v = name === 'RepresentationID' ? id : name === 'Bandwidth' ? bandwidth : String(n)
    return width === undefined ? v : v.padStart(Number(width), '0')
  })
}

export function dashPlayer (mpd: string, mpdUrl: string, count: number): DashRepresentation[] {
  const parser = new XMLParser({ ignoreAttributes: false, removeNSPrefix: true, attributeNamePrefix: '@', isArray: (name) => LISTS.has(name), parseAttributeValue: false, parseTagValue: false, trimValues: false })
  const root = (parser.parse(mpd) as El).MPD as El
  const out: DashRepresentation[] = []
  const mpdBase = baseOf(root, mpdUrl)
  for (const period of children(root, 'Period')) {
    const periodBase = baseOf(period, mpdBase)
    for (const set of children(period, 'AdaptationSet')) {
      const setBase = baseOf(set, periodBase)
      const setTemplate = (set.SegmentTemplate ?? {}) as El
      for (const rep of children(set, 'Representation')) {
        const base = baseOf(rep, setBase)
        const id = String(rep['@id'])
        const bandwidth = String(rep['@bandwidth'] ?? '')
        const template = { ...setTemplate, ...((rep.SegmentTemplate ?? {}) as El) }
        const list = (rep.SegmentList ?? set.SegmentList) as El | undefined
        if (template['@media'] !== undefined) {
          const start = Number(template['@startNumber'] ?? 1)
          const init = template['@initialization'] as string | undefined
          out.push({
            id,
            ...(init === undefined ? {} : { init: new URL(fill(init, id, bandwidth, 0), base).href }),
            media: Array.from({ length: count }, (_, i) => new URL(fill(String(template['@media']), id, bandwidth, start + i), base).href),
          })
        } else if (list !== undefined) {
          const init = (list.Initialization as El | undefined)?.['@sourceURL'] as string | undefined
          out.push({
            id,
            ...(init === undefined ? {} : { init: new URL(init, base).href }),
            media: children(list, 'SegmentURL').slice(0, count).map((s) => new URL(String(s['@media']), base).href),
          })
        } else {
          out.push({ id, media: [base] })
        }
      }
    }
  }
  return out
}
