// Module Studies.
//
// Multi-seed comparisons of methods (`metatrain study`): the plan file, the
// list of runs it implies (pretraining shared per seed, then each method on
// each seed), ranking every query of a run (`RunRanks.rank`), and the
// aggregation of every run's per-query ranks into
// per_query.csv, results.json (means, intervals, paired comparisons with
// Benjamini–Hochberg adjustment) and report.md. `StudyTaskRunner` carries out
// one task by calling the library as `pretrain` and `train` do; the CLI only
// orchestrates (which tasks, how many processes at once) and reports.
