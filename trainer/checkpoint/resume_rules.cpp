// Resume rules: which config changes a resumed run may make. See resume_rules.h.
#include "trainer/checkpoint/resume_rules.h"

#include <cinttypes>
#include <cstdio>
#include <cstdlib>

#include "common/error.h"

namespace condensa::trainer {
namespace {

// Keys (or whole sections, ending in '.') that do not change the trajectory.
const char* const kFreeKeys[] = {
    "run.dir",
    "run.threads",
    "run.overwrite",
    "train.steps",
    "train.eval_every",
    "train.eval_batches",
    "train.stop_at_step",
    "train.micro_batch_size",
    "train.max_skipped_steps",
    "parallel.",
    "checkpoint.",
    "log.",
};

bool is_free_key(const std::string& key) {
  for (const char* k : kFreeKeys) {
    const std::string free = k;
    if (free.back() == '.' ? key.compare(0, free.size(), free) == 0 : key == free) return true;
  }
  return false;
}

// Flattens a config into ("section.key", value text) in schema order.
class Flattener {
 public:
  explicit Flattener(std::vector<std::pair<std::string, std::string>>* out) : out_(out) {}
  template <class S>
  void section(const char* name, S& s) {
    prefix_ = std::string(name) + ".";
    s.visit(*this);
  }
  void operator()(const char* key, bool& v, const char*) { add(key, v ? "true" : "false"); }
  void operator()(const char* key, std::string& v, const char*) { add(key, "'" + v + "'"); }
  void operator()(const char* key, int64_t& v, const char*) { add(key, std::to_string(v)); }
  // The shortest text that reads back as the same double ("0.003", not "0.0030000000000000001").
  void operator()(const char* key, double& v, const char*) {
    char buf[32];
    for (int precision = 1; precision <= 17; ++precision) {
      std::snprintf(buf, sizeof buf, "%.*g", precision, v);
      if (std::strtod(buf, nullptr) == v) break;
    }
    add(key, buf);
  }

 private:
  void add(const char* key, std::string value) { out_->emplace_back(prefix_ + key, value); }
  std::vector<std::pair<std::string, std::string>>* out_;
  std::string prefix_;
};

std::vector<std::pair<std::string, std::string>> flatten(Config c) {
  std::vector<std::pair<std::string, std::string>> out;
  Flattener f(&out);
  c.visit_sections(f);
  return out;
}

}  // namespace

std::vector<ConfigChange> config_changes(const Config& saved, const Config& resumed) {
  const auto a = flatten(saved), b = flatten(resumed);
  std::vector<ConfigChange> out;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    if (a[i].second != b[i].second)
      out.push_back({a[i].first, a[i].second, b[i].second, !is_free_key(a[i].first)});
  }
  return out;
}

std::vector<std::string> check_resume_config(const Config& saved,
                                             const Config& resumed,
                                             int64_t step,
                                             const std::string& dir) {
  CONDENSA_CHECK(resumed.train.steps >= step, ConfigError, "train.steps (", resumed.train.steps,
                 ") is below the step of the checkpoint it resumes (", step, ", ", dir,
                 "): raise train.steps, or start a new run.dir");
  std::vector<std::string> notes;
  if (step == 0) return notes;  // weights only (condensa import): nothing trained to continue
  std::string refused;
  for (const auto& c : config_changes(saved, resumed)) {
    const std::string line = str(c.key, ": ", c.saved, " -> ", c.resumed);
    if (c.trajectory && !resumed.checkpoint.allow_config_change) {
      refused += (refused.empty() ? "" : ", ") + line;
      continue;
    }
    if (c.key == "train.steps")
      notes.push_back(line + " (the learning-rate schedule follows the new total)");
    else if (c.trajectory)
      notes.push_back(line +
                      " (changes the trajectory; allowed by checkpoint.allow_config_change)");
    else
      notes.push_back(line);
  }
  CONDENSA_CHECK(refused.empty(), ConfigError, "resuming ", dir,
                 " with a config that changes the training trajectory (", refused,
                 "); restore these values, start a new run.dir, or set "
                 "checkpoint.allow_config_change=true");
  return notes;
}

std::string segment_config_name(int64_t step) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "config.step_%08" PRId64 ".yaml", step);
  return buf;
}

}  // namespace condensa::trainer
