// cpu/inherit.cpp: ops whose reference kernel is also the CPU kernel, on purpose.
#include "../core/backend.h"

MF_INHERIT(cpu, layernorm);
MF_INHERIT(cpu, starrelu);
MF_INHERIT(cpu, pool);
MF_INHERIT(cpu, scale_add);
MF_INHERIT(cpu, mean_hw);
MF_INHERIT(cpu, cross_entropy);
MF_INHERIT(cpu, dropout);
MF_INHERIT(cpu, axpy);
MF_INHERIT(cpu, scale);
MF_INHERIT(cpu, sumsq);
MF_INHERIT(cpu, lerp);
MF_INHERIT(cpu, fill);
MF_INHERIT(cpu, cast);
MF_INHERIT(cpu, permute);
MF_INHERIT(cpu, adamw);
MF_INHERIT(cpu, lamb);
MF_INHERIT(cpu, sgd);
