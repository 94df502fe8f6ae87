/**
 * PMS's two renderings of one answer (docs/plex-api.md §1): XML elements with attributes, or JSON
 * with the same data under a top-level `MediaContainer` object, children grouped in arrays by tag.
 */

export type Attrs = Record<string, string | number | boolean>

/** One element of an answer, rendered as XML (the default) or as PMS's JSON. */
export interface Node {
  tag: string
  attrs: Attrs
  children?: Node[]
  /** JSON renders this child as an object rather than an array (`MediaContainer.Device`, a session's `Player`). */
  single?: boolean
  /**
   * The JSON key this child is grouped under when it differs from the XML tag: PMS writes a movie
   * as `<Video>` and a show as `<Directory>`, but both as `"Metadata": [...]` in JSON.
   */
  jsonTag?: string
}

function escapeXml (s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&apos;' })[c] as string)
}

export function toXml (node: Node): string {
  // PMS writes booleans as 1/0 in XML and as true/false in JSON (§4).
  const attrs = Object.entries(node.attrs)
    .map(([k, v]) => ` ${k}="${escapeXml(typeof v === 'boolean' ? (v ? '1' : '0') : String(v))}"`).join('')
  if (node.tag !== 'MediaContainer' && (node.children ?? []).length === 0) return `<${node.tag}${attrs} />`
  return `<${node.tag}${attrs}>${(node.children ?? []).map(toXml).join('')}</${node.tag}>`
}

export function toJson (node: Node): Record<string, unknown> {
  const out: Record<string, unknown> = { ...node.attrs }
  for (const child of node.children ?? []) {
    const key = child.jsonTag ?? child.tag
    if (child.single === true) out[key] = toJson(child)
    else ((out[key] ??= []) as unknown[]).push(toJson(child))
  }
  return out
}
