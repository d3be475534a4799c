// cpu/inherit.cpp: ops whose reference kernel is also the CPU kernel, on purpose:
//   cast, permute: plain copies used at load time and in tests, not on the hot path.
#include "../core/backend.h"

MF_INHERIT(cpu, cast);
MF_INHERIT(cpu, permute);
