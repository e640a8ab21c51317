// Module Evaluation.
//
// Ranking metrics (Acc@1, HR@k, NDCG@k, MRR) over the full catalogue,
// zero-shot and few-shot evaluation, the popularity baseline, user-level
// bootstrap intervals and paired differences, and report.json / Markdown reports.
