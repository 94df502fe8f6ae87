import { readFileSync } from 'node:fs'

/**
 * The broker's version, read once from package.json (one level up from both src/ and dist/, and
 * the image copies package.json next to dist/). The OpenAPI document and `ptb --version` both
 * use it, so a release changes one file.
 */
export const VERSION: string = (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version
