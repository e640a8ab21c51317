// Module Studies.
//
// Multi-seed comparisons of methods (`metatrain study`): the plan file, the
// list of runs it implies (pretraining shared per seed, then each method on
// each seed), and the aggregation of every run's per-query ranks into
// per_query.csv, results.json (means, intervals, paired comparisons with
// Benjamini–Hochberg adjustment) and report.md. Running the tasks is the
// CLI's job; this module decides what to run and what the results mean.
