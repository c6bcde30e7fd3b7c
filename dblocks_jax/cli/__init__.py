"""The command line: `main` (flags and one-line errors) and one module per
`--mode` (train is `families.train`; eval, sample, compare, memory, plan,
encode, assemble)."""
