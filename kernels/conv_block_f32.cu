// kernels/conv_block.cu's kernels for float32 weights, in a translation unit of their own: the
// build compiles the three weight dtypes in parallel, and conv_block.cu (compiled without
// DP_FAST_CONV_BLOCK_WEIGHTS) holds only the dispatch to them.
#define DP_FAST_CONV_BLOCK_WEIGHTS float
#include "kernels/conv_block.cu"
