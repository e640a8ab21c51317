// Module Studies.
//
// Multi-seed comparisons of methods (`metatrain study`): the plan file, the
// list of runs it implies (pretraining shared per seed, then each method on
// each seed), ranking every query of a run (`RunRanks.rank`), and the
// aggregation of every run's per-query ranks into
// per_query.csv, results.json (means, intervals, paired comparisons with
// Benjamini–Hochberg adjustment) and report.md. Starting the runs (pretrain,
// train) is still the CLI's job; this module decides what to run, ranks what
// the runs made and says what the results mean.
