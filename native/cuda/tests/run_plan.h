// cuda/tests/run_plan.h: replays exported inference plans on a backend (see run_plan.cpp).
#pragma once
#include <cstdio>
#include <string>

#include "../../core/backend.h"

namespace mf::plan_replay {

struct Tally {
  int passed = 0, failed = 0;
};

// Runs every DIR/*.plan whose name contains `filter` on `be` in precision `prec`, checks the outputs that
// have expected data, and with `time` prints (and writes to json, when not null) the median time of a whole
// forward pass.
Tally run_plans(const std::string& dir, const std::string& filter, const Backend& be, bool time, FILE* json,
                Precision prec = Precision::f32);

}  // namespace mf::plan_replay
