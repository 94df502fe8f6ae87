import neostandard from 'neostandard'

// The project's style: neostandard (standard's rules for flat config), with TypeScript.
export default [
  ...neostandard({ ts: true, ignores: ['dist/**', 'packages/*/dist/**', 'coverage/**', '.tap/**', '.demo/**'] }),
  {
    rules: {
      // TypeBox's idiom names a schema and its static type alike (`const X = Type.Object(…)`,
      // `type X = Static<typeof X>`); TypeScript itself reports real redeclarations.
      '@typescript-eslint/no-redeclare': 'off',
      // `void promise` marks a deliberate fire-and-forget.
      'no-void': ['error', { allowAsStatement: true }],
    },
  },
  {
    files: ['test/**/*.ts'],
    rules: {
      // Loops that run until a flag set by another async task (a flood, a shutdown) ends them.
      'no-unmodified-loop-condition': 'off',
    },
  },
]
