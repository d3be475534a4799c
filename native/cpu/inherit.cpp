// cpu/inherit.cpp: ops whose reference kernel is also the CPU kernel, on purpose.
#include "../core/backend.h"

MF_INHERIT(cpu, cross_entropy);
MF_INHERIT(cpu, cast);
MF_INHERIT(cpu, permute);
MF_INHERIT(cpu, adamw);
MF_INHERIT(cpu, lamb);
MF_INHERIT(cpu, sgd);
