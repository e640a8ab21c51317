// Module Kernels.
//
// The float32 math, llm.c style: `FloatBuffer` (one flat, aligned
// buffer), sgemm through OpenBLAS (single-threaded; parallelism is processes),
// each layer's forward and backward side by side with the backward
// accumulating, fast exp/tanh, Adam and global-norm clipping, and the
// fixed-order reductions that make sums independent of the number of workers.
