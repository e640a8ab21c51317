// Module Training.
//
// The training math with no sockets: `MetaTrainer` (the coordinator's state,
// plan, reduction, Adam step, validation and checkpoints), `UnitComputer` (a
// worker's units), the plans and reduction tree that fix the order of every
// sum, `Pretrainer` for the GRU4Rec baseline (split by role as MetaTrainer is:
// its state, an epoch, resume), and run directories
// (config.yaml, run.json, metrics.jsonl, TensorBoard, the lock).
