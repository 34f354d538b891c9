// The one command-line flag parser every subcommand uses: `--flag value`, `--flag=value`,
// boolean flags and positional arguments. A repeated flag keeps every value in order; get()
// returns the last one (so a later flag overrides an earlier one), and `--set`-style flags read
// the whole list.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace condensa {

// Parsed `--flag value` / `--flag=value` / positional arguments. Throws ConfigError for a
// flag not in `known` (naming it) or a value-taking flag without a value.
struct ParsedArgs {
  std::vector<std::string> positional;
  std::map<std::string, std::vector<std::string>> flags;  // "--set" -> {"a.b=c", ...}
  bool help = false;
  bool has(const std::string& f) const { return flags.count(f) > 0; }
  std::string get(const std::string& f, const std::string& fallback = "") const;
  double get_double(const std::string& f, double fallback) const;
  int64_t get_int(const std::string& f, int64_t fallback) const;
};
ParsedArgs parse_args(const std::vector<std::string>& args,
                      const std::vector<std::string>& value_flags,
                      const std::vector<std::string>& bool_flags = {});

}  // namespace condensa
