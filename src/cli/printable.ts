/**
 * Text from elsewhere (plex.tv resource names, identifiers, addresses: other users choose what a
 * shared server is called) made safe to print on a terminal: control characters (C0, DEL, C1,
 * ANSI escape sequences start with ESC or CSI), line and paragraph separators and the bidi
 * controls that reorder what is shown are written as `\u{…}` instead. A name cannot then move the
 * cursor, clear the screen, set the window title or pose as another line.
 */
export function printable (text: string): string {
  // Matching control characters is the point here.
  // eslint-disable-next-line no-control-regex
  return text.replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]/gu,
    (c) => `\\u{${c.codePointAt(0)!.toString(16)}}`)
}
