/**
 * Server names and client ids: one rule, used by the config loader, the HTTP schemas
 * (`src/schemas/common.ts`) and `ptb client add`, so whatever one of them accepts the others do too.
 *
 * Lowercase letters, digits, `_` and `-`, starting with a letter or digit, at most 63 characters.
 * The characters left out each have a job elsewhere:
 * - `:` separates the parts of Redis keys (`src/broker/keys.ts`);
 * - `.` separates the parts of BullMQ job ids (`src/jobs/queues.ts`);
 * - `~` separates a client id from its source in a token slot (`src/broker/tokens.ts`), and
 *   starts the broker's own canary client `~canary` (`src/broker/probe.ts`), which therefore can
 *   never collide with a configured client.
 * Uppercase is left out so that two names never differ only in case.
 */
export const NAME_PATTERN = '^[a-z0-9][a-z0-9_-]{0,62}$'

const NAME = new RegExp(NAME_PATTERN)

/** In words, for usage and error messages. */
export const NAME_RULE = 'lowercase letters, digits, _ and -, starting with a letter or digit, at most 63 characters'

export function isName (s: string): boolean {
  return NAME.test(s)
}
