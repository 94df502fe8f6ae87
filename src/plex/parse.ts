import { XMLParser } from 'fast-xml-parser'

const xml = new XMLParser({
  ignoreAttributes: false,
  attributeNamePrefix: '',
  parseAttributeValue: false,
  isArray: (name) => name === 'Connection' || name === 'Device',
})

/**
 * The `MediaContainer` of a PMS answer, from JSON or XML. PMS answers XML by default and JSON
 * with `Accept: application/json`, but some servers and proxies answer XML whatever was asked,
 * and headers lie: the body decides (docs/plex-api.md §1). `undefined` when it is neither.
 */
export function parsePlex (body: string, _contentType: string): Record<string, unknown> | undefined {
  const text = body.trimStart()
  if (text.startsWith('{')) {
    try {
      const mc = (JSON.parse(text) as { MediaContainer?: unknown }).MediaContainer
      return mc !== null && typeof mc === 'object' ? mc as Record<string, unknown> : undefined
    } catch {
      return undefined
    }
  }
  if (text.startsWith('<')) {
    try {
      const doc = xml.parse(text) as { MediaContainer?: unknown }
      const mc = doc.MediaContainer
      if (mc === '') return {}
      return mc !== null && typeof mc === 'object' ? mc as Record<string, unknown> : undefined
    } catch {
      return undefined
    }
  }
  return undefined
}
