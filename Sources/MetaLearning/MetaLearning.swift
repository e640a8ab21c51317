// Module MetaLearning.
//
// The inner and outer loops of one task: recency and reliability weights of
// support losses, plain and Meta-SGD inner steps, and the FOMAML, second-order
// MAML (with residual meta-loss) and Meta-SGD meta-gradients; the seeded
// meta-batch sampler.
