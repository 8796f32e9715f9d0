"""The base model and adapters in memory: model loading and the bundled cache, the generation
engine, adapter checks, reward models and the adapter watcher. Imports `tasks` and `hub`, never
`demos` or `trainers`."""
