// Module Core.
//
// The ground every module stands on, with no dependencies: seeded random
// generators keyed by (seed, purpose, iteration, ...), SHA-256, JSON, atomic
// file writes (temporary name, flush, rename), durations, the version string,
// and `MetatrainError`, the one-line error every command prints.
