// cpu/inherit.cpp: ops whose reference kernel is also the CPU kernel, on purpose:
//   cross_entropy: [B, K] rows with a double-precision log-sum-exp; tiny next to the model.
//   cast, permute: plain copies used at load time and in tests, not on the hot path.
#include "../core/backend.h"

MF_INHERIT(cpu, cross_entropy);
MF_INHERIT(cpu, cast);
MF_INHERIT(cpu, permute);
